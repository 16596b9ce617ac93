"""models.timing: warm-up, interleaved rounds, median, device sync and the call-ratio ceiling,
on fake samplers that advance a fake clock (no test here reads a real clock)."""
import pytest
import torch

from models import timing
from models.timing import CEILING_SLACK, Contender, compare


class FakeClock:
    def __init__(self):
        self.now, self.reads = 0.0, 0

    def __call__(self):
        self.reads += 1
        return self.now


class FakeSampler:
    """``calls`` model calls of ``per_call`` seconds each; the first run also costs ``first_extra``."""

    def __init__(self, clock, calls, per_call=0.01, first_extra=0.0, log=None, name=None):
        self.clock, self.calls, self.per_call, self.first_extra = clock, calls, per_call, first_extra
        self.runs, self.log, self.name = 0, log, name

    def __call__(self):
        self.clock.now += self.calls * self.per_call + (self.first_extra if self.runs == 0 else 0.0)
        self.runs += 1
        if self.log is not None:
            self.log.append(self.name)
        return self.calls


def test_a_sampler_slowed_on_its_first_call_gives_no_above_ceiling_figure():
    # the failure: the reference is timed first and cold, the other after a warm-up
    clock = FakeClock()
    euler = FakeSampler(clock, 50, first_extra=30.0)  # a cold first run 60x slower than a warm one
    fast = FakeSampler(clock, 16, per_call=0.0102)     # a little overhead per call
    c = compare({"euler": euler, "fast": fast}, "euler", rounds=3, clock=clock)
    assert euler.runs == fast.runs == 4                # one untimed warm-up each, then 3 timed rounds
    t = c["fast"]
    assert t.ceiling == pytest.approx(50 / 16)
    assert not t.flagged and t.speedup == pytest.approx(50 / (16 * 1.02))
    assert t.speedup <= t.ceiling and c["euler"].runs == pytest.approx([0.5] * 3)  # the cold run is not in them
    assert c.notes() == []


def test_a_reference_slowed_beyond_its_warm_up_is_flagged_not_reported():
    """A slow spell that outlasts the warm-up (here the warm-up and two of three timed rounds of the
    reference) moves the median: the ceiling check turns the figure into a flagged problem."""
    clock = FakeClock()
    slow = iter([30.0, 30.0, 30.0] + [0.0] * 10)

    def euler():
        clock.now += 0.5 + next(slow)
        return 50
    fast = FakeSampler(clock, 16)
    c = compare({"euler": euler, "fast": fast}, "euler", rounds=3, warmup=1, clock=clock)
    t = c["fast"]
    assert t.measured_speedup > CEILING_SLACK * t.ceiling
    assert t.flagged and t.speedup is None and t.speedup_text() == "above ceiling"
    (note,) = c.notes()
    assert "measurement problem: fast" in note and "ceiling 3.12x" in note and "not a result" in note
    assert t.as_dict()["speedup"] is None and t.as_dict()["above_ceiling"] is True


def test_the_ceiling_flag_allows_five_percent_and_no_more():
    for per_call, flagged in ((0.01 / 1.049, False), (0.01 / 1.051, True)):
        clock = FakeClock()
        c = compare({"ref": FakeSampler(clock, 20), "b": FakeSampler(clock, 10, per_call=per_call)}, "ref",
                    clock=clock)
        assert c["b"].ceiling == 2.0 and c["b"].flagged is flagged
        assert (c["b"].speedup is None) is flagged
        assert c["ref"].speedup == 1.0 and not c["ref"].flagged


def test_rounds_are_interleaved_in_rotated_order_and_the_median_is_reported():
    clock, log = FakeClock(), []
    samplers = {n: FakeSampler(clock, 5, log=log, name=n) for n in "abc"}
    delays = iter([0, 9.0, 0, 0, 0, 0])  # one slow run of "a" in its first timed round

    def a():
        clock.now += next(delays)
        return samplers["a"]()
    c = compare({"a": a, "b": samplers["b"], "c": samplers["c"]}, "a", rounds=3, clock=clock)
    assert log == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotated rounds
    assert c["a"].runs[0] == pytest.approx(9.05) and c["a"].seconds == pytest.approx(0.05)  # median
    assert c["a"].spread == pytest.approx(9.0 / 0.05)
    assert c["b"].seconds_per_call == pytest.approx(0.01)


def test_the_speedup_pairs_each_round_so_a_burst_of_load_cancels():
    """Load triples the reference's time in the last two rounds and the other's in the first of
    them: the median of the per-round ratios stays at the true 2x (its ceiling), where the ratio of
    the two medians would say 4x, a measurement problem."""
    clock = FakeClock()

    def run(seconds, calls, load):
        def go():
            clock.now += seconds * next(load)
            return calls
        return go
    ref = run(1.0, 20, iter([1, 1, 1, 3, 3]))  # warm-up, then four rounds
    half = run(0.5, 10, iter([1, 1, 1, 3, 1]))
    c = compare({"ref": ref, "half": half}, "ref", rounds=4, clock=clock)
    assert c["ref"].runs == [1, 1, 3, 3] and c["half"].runs == [0.5, 0.5, 1.5, 0.5]
    assert c["ref"].seconds / c["half"].seconds == pytest.approx(4.0)  # what the medians alone would say
    assert c["half"].measured_speedup == pytest.approx(2.0)            # ratios 2, 2, 2, 6
    assert c["half"].ceiling == 2.0 and not c["half"].flagged and c["half"].speedup == pytest.approx(2.0)


def test_setup_runs_untimed_before_every_run_and_feeds_run():
    clock, seen = FakeClock(), []

    def setup():
        clock.now += 100.0  # expensive, but outside the timed region
        return len(seen)

    def run(token):
        seen.append(token)
        clock.now += 1.0
        return 4
    c = compare({"x": Contender(run, setup)}, rounds=3, warmup=2, clock=clock)
    assert seen == [0, 1, 2, 3, 4] and c["x"].runs == [1.0, 1.0, 1.0]
    assert c["x"].measured_speedup is None and c["x"].speedup_text() == "-"


def test_fewer_than_three_rounds_are_labelled_unrepeated():
    clock = FakeClock()
    c = compare({"r": FakeSampler(clock, 2), "s": FakeSampler(clock, 2)}, "r", rounds=1, clock=clock)
    assert not c.repeated and "UNREPEATED" in c.method()
    assert any("unrepeated (1 round)" in n for n in c.notes())
    assert compare({"r": FakeSampler(clock, 2)}, "r", rounds=3, clock=clock).repeated


def test_the_device_is_synchronised_before_every_clock_read(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    clock = FakeClock()

    def read():
        events.append("clock")
        return clock()
    c = compare({"s": FakeSampler(clock, 3)}, rounds=3, device="cuda", clock=read)
    assert events.count("clock") == 8  # start and stop of 1 warm-up and 3 timed runs
    assert all(events[i - 1] == "sync" for i, e in enumerate(events) if e == "clock")
    assert "synchronised" in c.method()
    assert timing.device_sync("cpu")() is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(reference="nope"), "not among the contenders"),
    (dict(rounds=0), "rounds >= 1"),
    (dict(warmup=0), "warmup >= 1"),
])
def test_bad_settings_are_refused(kwargs, message):
    clock = FakeClock()
    with pytest.raises(ValueError, match=message):
        compare({"s": FakeSampler(clock, 3)}, clock=clock, **kwargs)
    with pytest.raises(ValueError, match="need a positive count"):
        compare({"s": lambda: 0}, clock=clock)


def test_a_speedup_within_the_noise_above_its_ceiling_is_shown_at_the_ceiling():
    from models.timing import Timing
    t = Timing("fast", [1.0], 16.0, measured_speedup=3.16, ceiling=3.125)
    assert t.speedup == 3.16 and t.at_ceiling and not t.flagged and t.speedup_text() == "at ceiling"
    below = Timing("fast", [1.0], 16.0, measured_speedup=3.05, ceiling=3.125)
    assert not below.at_ceiling and below.speedup_text() == "3.05x"
