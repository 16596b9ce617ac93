"""Wall-clock comparisons of samplers that a reader can trust; sample.py, benchmarks/bench.py,
benchmarks/policies.py and examples/diffusers_sd3.py time through ``compare``.

* Every contender first runs ``warmup`` times untimed: first-call costs (kernel selection, lazy
  allocation, caches) are paid before the clock starts, by every contender alike.
* The contenders then run in interleaved rounds, each round in a rotated order (A B C, B C A, ...),
  so that a slow drift or a burst of load on a shared machine hits all of them; each reports the
  median of its rounds. A speedup is the median over rounds of the ratio within one round (the
  reference and the contender timed moments apart, under the same load), which a burst of load
  lasting a few runs moves far less than a ratio of two medians.
* The device is synchronised before every clock read (CUDA and MPS run asynchronously).
* Every speedup is checked against its call-ratio ceiling. A contender making K model calls
  against the reference's R, at equal cost per call, cannot be more than R / K faster; whatever
  else it does only adds time. A measured speedup above ``CEILING_SLACK`` x R / K means the runs
  timed something other than sampling (a cold start, a burst of load): it is flagged as a
  measurement problem, and ``Timing.speedup`` is None so that it is never reported as a result.

A contender is a callable making one run and returning its number of model calls, or a
``Contender`` whose ``setup`` (untimed, before every run) gives what ``run`` takes, e.g. a fresh
copy of a learning sampler so that every timed run replays the same decisions.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

import torch

__all__ = ["CEILING_SLACK", "MIN_ROUNDS", "Contender", "Timing", "Comparison", "compare", "device_sync",
           "speedup_text"]

CEILING_SLACK = 1.05  # a speedup above 1.05 x the call ratio is a measurement problem
MIN_ROUNDS = 3        # fewer timed rounds are reported as unrepeated


@dataclass
class Contender:
    """One thing to time: ``run()`` (or ``run(setup())`` when ``setup`` is given) makes one run
    and returns its model calls; ``setup`` is called before every run, outside the timed region."""

    run: Callable[..., float]
    setup: Optional[Callable[[], Any]] = None


@dataclass
class Timing:
    """One contender's timed rounds.

    ``speedup`` is the median over rounds of (reference's time / this one's) in the same round, or
    None when it is above the call-ratio ceiling (``flagged``) or there is no reference;
    ``measured_speedup`` keeps the raw figure.
    """

    name: str
    runs: list[float]                  # seconds of each timed round, in round order
    calls: float                       # model calls per run (mean over the timed rounds)
    measured_speedup: Optional[float] = None
    ceiling: Optional[float] = None    # reference calls / this contender's calls
    run_calls: list[float] = field(default_factory=list)  # model calls of each timed round

    @property
    def seconds(self) -> float:
        """Median seconds of one run."""
        return statistics.median(self.runs)

    @property
    def seconds_per_call(self) -> float:
        return self.seconds / self.calls

    @property
    def spread(self) -> float:
        """(slowest - fastest round) / median: how much the rounds disagree."""
        return (max(self.runs) - min(self.runs)) / self.seconds

    @property
    def flagged(self) -> bool:
        """The measured speedup exceeds what the call ratio allows: a measurement problem."""
        return (self.measured_speedup is not None and self.ceiling is not None
                and self.measured_speedup > CEILING_SLACK * self.ceiling)

    @property
    def speedup(self) -> Optional[float]:
        return None if self.flagged else self.measured_speedup

    @property
    def at_ceiling(self) -> bool:
        """Measured above the ceiling by no more than the timing noise allows: the speedup is the
        ceiling, within that noise (printed as "at ceiling", never as a number above it)."""
        return (self.speedup is not None and self.ceiling is not None and self.speedup > self.ceiling)

    def speedup_text(self) -> str:
        """What a table prints for this speedup (``speedup_text``)."""
        return speedup_text(self.measured_speedup, self.ceiling)

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "seconds_per_call": self.seconds_per_call, "calls": self.calls,
                "runs": list(self.runs), "speedup": self.speedup, "measured_speedup": self.measured_speedup,
                "speedup_ceiling": self.ceiling, "above_ceiling": self.flagged}


@dataclass
class Comparison:
    """What ``compare`` measured: one Timing per contender, in the order given."""

    timings: dict[str, Timing]
    reference: Optional[str]
    rounds: int
    warmup: int
    device: str = "cpu"

    def __getitem__(self, name: str) -> Timing:
        return self.timings[name]

    @property
    def repeated(self) -> bool:
        return self.rounds >= MIN_ROUNDS

    def method(self) -> str:
        """One line saying how the times were taken."""
        how = (f"median of {self.rounds} interleaved rounds" if self.repeated else
               f"UNREPEATED: {self.rounds} round{'s' if self.rounds > 1 else ''}, not a median of {MIN_ROUNDS}")
        synced = " (synchronised before each clock read)" if self.device != "cpu" else ""
        return f"timing on {self.device}{synced}: {how}, after {self.warmup} untimed warm-up run(s) of each"

    def notes(self) -> list[str]:
        """A line per measurement problem: speedups above their ceiling, and unrepeated timings."""
        out = []
        for t in self.timings.values():
            if t.at_ceiling:
                out.append(f"{t.name} measured {t.measured_speedup:.2f}x, above its ceiling {t.ceiling:.2f}x by less than "
                           f"the {CEILING_SLACK - 1:.0%} the timing noise allows: shown as 'at ceiling' (it cannot be "
                           f"faster than its call ratio)")
            if t.flagged:
                out.append(f"measurement problem: {t.name} measured {t.measured_speedup:.2f}x faster than "
                           f"{self.reference}, above its call-ratio ceiling {t.ceiling:.2f}x "
                           f"({self.timings[self.reference].calls:g} / {t.calls:g} calls) x {CEILING_SLACK}; the runs "
                           f"timed something other than sampling (load, a cold start): not a result, run it again")
        if not self.repeated:
            out.append(f"timings are unrepeated ({self.rounds} round{'s' if self.rounds > 1 else ''}): "
                       f"no speedup here is a result")
        return out

    def as_dict(self) -> dict:
        return {"reference": self.reference, "rounds": self.rounds, "warmup": self.warmup, "device": self.device,
                "repeated": self.repeated, "ceiling_slack": CEILING_SLACK,
                "timings": {k: t.as_dict() for k, t in self.timings.items()}}


def speedup_text(measured: Optional[float], ceiling: Optional[float]) -> str:
    """"3.02x"; "-" without a reference; "at ceiling" above the ceiling by less than the timing noise
    (``CEILING_SLACK``); "above ceiling" beyond it, a measurement problem (see Comparison.notes)."""
    if measured is None:
        return "-"
    if ceiling is not None and measured > CEILING_SLACK * ceiling:
        return "above ceiling"
    return "at ceiling" if ceiling is not None and measured > ceiling else f"{measured:.2f}x"


def device_sync(device: Union[torch.device, str, None]) -> Callable[[], None]:
    """A function that waits for ``device`` to finish its queued work (nothing to wait for on the CPU)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def compare(contenders: Mapping[str, Union[Callable[[], float], Contender]], reference: Optional[str] = None, *,
            rounds: int = MIN_ROUNDS, warmup: int = 1, device: Union[torch.device, str, None] = None,
            clock: Callable[[], float] = time.perf_counter, progress: Optional[Callable] = None) -> Comparison:
    """Time every contender: ``warmup`` untimed runs each, then ``rounds`` interleaved timed rounds.

    Args:
        contenders: name -> a callable making one run and returning its model calls, or a Contender.
        reference: the name every speedup is measured against (None: no speedups).
        rounds: timed rounds; fewer than MIN_ROUNDS are reported as unrepeated.
        warmup: untimed runs of each contender before the first timed round (at least 1).
        device: synchronised before every clock read.
        clock: seconds as a float (tests pass a fake one).
        progress: wraps the range of rounds (e.g. a tqdm), or None.
    Returns:
        a Comparison; its ``notes()`` must be printed with the times.
    Raises:
        ValueError: no contenders, an unknown reference, rounds < 1, warmup < 1, or a run reporting
            no model calls (its speedup could not be checked against a ceiling).
    """
    if not contenders:
        raise ValueError("compare() needs at least one contender")
    if reference is not None and reference not in contenders:
        raise ValueError(f"reference {reference!r} is not among the contenders {list(contenders)}")
    if rounds < 1 or warmup < 1:
        raise ValueError(f"need rounds >= 1 and warmup >= 1, got rounds={rounds}, warmup={warmup}")
    items = {k: (c if isinstance(c, Contender) else Contender(c)) for k, c in contenders.items()}
    sync = device_sync(device)

    def once(c: Contender) -> tuple[float, float]:
        arg = (c.setup(),) if c.setup is not None else ()
        sync()
        start = clock()
        calls = c.run(*arg)
        sync()
        return clock() - start, calls

    for _ in range(warmup):
        for c in items.values():
            once(c)
    names = list(items)
    runs, calls = {k: [] for k in names}, {k: [] for k in names}
    for r in (progress(range(rounds)) if progress else range(rounds)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, n = once(items[name])
            if not n or n <= 0:
                raise ValueError(f"{name}: a timed run reported {n!r} model calls; need a positive count")
            runs[name].append(seconds)
            calls[name].append(float(n))
    timings = {k: Timing(k, runs[k], sum(calls[k]) / len(calls[k]), run_calls=calls[k]) for k in names}
    if reference is not None:
        ref = timings[reference]
        for t in timings.values():
            t.measured_speedup = statistics.median(a / b if b > 0 else float("inf") for a, b in zip(ref.runs, t.runs))
            t.ceiling = ref.calls / t.calls
    dev = str(torch.device(device)) if device is not None else "cpu"
    return Comparison(timings, reference, rounds, warmup, dev)
