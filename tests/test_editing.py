"""Editing on the closed-form toy flows: inversion round trips at the solver's order, partial
generation from t0 = 0 is plain sampling, FlowEdit between equal conditions keeps the source,
and FastFlow makes exactly its K calls on each edit path."""
import math

import pytest
import torch

import fastflow as ff
from fastflow import editing, grids
from problems import noise, sharp_mixture


class TwoClasses:
    """A conditional toy model: class y's data is a Gaussian centred at MEANS[y]."""

    MEANS = [[1.5, -0.5], [-1.0, 1.0]]

    def __init__(self):
        self.flows = [ff.toy.GaussianFlow(m, 0.4) for m in self.MEANS]
        self.calls = 0

    def __call__(self, x, t, y=0):
        self.calls += 1
        return self.flows[y](x=x, t=t)


def round_trip_error(make, T):
    flow = ff.toy.GaussianFlow([1.0, -2.0], 0.5)
    x1 = flow.solution(noise(64, 2))  # a source on the data side
    z = editing.invert(make(grids.interval(T, 1.0, 0.0)), flow, x1).x
    back = make(grids.interval(T)).sample(flow, z).x
    return (back - x1).norm() / x1.norm()


# Euler's round trip converges at its order 1; Heun's at 3, one more than its order 2: the
# trapezoid rule is symmetric, so the leading errors of the backward and forward runs cancel
@pytest.mark.parametrize("make, slope", [(lambda g: ff.EulerSampler(times=g), 1), (lambda g: ff.HeunSampler(times=g), 3)])
def test_inversion_then_regeneration_returns_the_source_at_the_solvers_order(make, slope):
    errors = [float(round_trip_error(make, T)) for T in (20, 40, 80)]
    slopes = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(s - slope) < 0.1 for s in slopes), (errors, slopes)


def test_inversion_of_a_gaussian_flow_reaches_its_exact_noise():
    flow = ff.toy.GaussianFlow([1.0, -2.0], 0.5)
    z = noise(32, 2)
    x1 = flow.solution(z)
    back = editing.invert(ff.HeunSampler(times=grids.interval(200, 1.0, 0.0)), flow, x1).x
    assert (back - z).abs().max() < 1e-4


def test_sdedit_from_t0_0_is_plain_sampling_and_from_t0_near_1_keeps_the_source():
    flow, z = sharp_mixture(), noise(16, 2, seed=3)
    src = noise(16, 2, seed=4)
    plain = ff.EulerSampler(20).sample(flow, z).x
    assert torch.equal(editing.sdedit(ff.EulerSampler(20), flow, src, 0.0, z).x, plain)
    kept = editing.sdedit(ff.EulerSampler(times=grids.interval(10, 0.999)), flow, src, 0.999, z).x
    assert (kept - src).norm() / src.norm() < 0.01


def test_flowedit_between_equal_conditions_keeps_the_source_and_moves_it_between_different_ones():
    model, src = TwoClasses(), ff.toy.GaussianFlow(TwoClasses.MEANS[0], 0.4).solution(noise(64, 2))
    same = editing.flowedit(ff.EulerSampler(times=grids.interval(10, 0.2)), model, src, {"y": 0}, {"y": 0}, 0.2)
    torch.testing.assert_close(same.x, src, rtol=0, atol=1e-12)  # the difference field is 0 (to rounding)
    assert same.info["model_calls"] == 20 == model.calls
    moved = editing.flowedit(ff.EulerSampler(times=grids.interval(20, 0.0)), model, src, {"y": 0}, {"y": 1}, 0.0,
                             n_avg=2).x
    shift = torch.tensor(TwoClasses.MEANS[1]) - torch.tensor(TwoClasses.MEANS[0])
    # the flows differ by a shift of the mean only: FlowEdit moves every point by that shift
    torch.testing.assert_close(moved - src, shift.expand_as(src).to(src), rtol=0, atol=0.05)


@pytest.mark.parametrize("method", ["sdedit", "invert", "flowedit"])
def test_fastflow_calibrates_on_the_edit_path_and_makes_exactly_k_calls(method):
    model, T, K = TwoClasses(), 30, 12
    src = ff.toy.GaussianFlow(TwoClasses.MEANS[0], 0.4).solution(noise(32, 2))
    grid = {"sdedit": grids.interval(T, 0.3), "invert": grids.interval(T, 1.0, 0.0),
            "flowedit": grids.interval(T, 0.2)}[method]
    s = ff.FastFlowSampler(times=grid, calls=K)

    def counted(x, t, y):
        counted.calls += 1
        return model(x, t, y)
    counted.calls = 0

    def run():
        if method == "sdedit":
            return editing.sdedit(s, counted, src, 0.3, noise(32, 2, seed=1), y=1)
        if method == "invert":
            return editing.invert(s, counted, src, y=0)
        return editing.flowedit(s, counted, src, {"y": 0}, {"y": 1}, 0.2)
    first = run()
    assert first.info["calibration_run"] and first.nfe == T
    calls_before = counted.calls
    second = run()
    per_call = 2 if method == "flowedit" else 1
    assert second.nfe == K and counted.calls - calls_before == K * per_call
    full = {"sdedit": lambda: editing.sdedit(ff.EulerSampler(times=grid), model, src, 0.3, noise(32, 2, seed=1), y=1),
            "invert": lambda: editing.invert(ff.EulerSampler(times=grid), model, src, y=0),
            "flowedit": lambda: editing.flowedit(ff.EulerSampler(times=grid), model, src, {"y": 0}, {"y": 1}, 0.2)}
    ref = full[method]().x
    assert (second.x - ref).norm() / ref.norm() < 0.02  # the plan stays close to the full-step edit


@pytest.mark.parametrize("call, message", [
    (lambda: editing.sdedit(ff.EulerSampler(10), sharp_mixture(), noise(4, 2), 1.0, noise(4, 2)), r"t0 must be .* \[0, 1\)"),
    (lambda: editing.sdedit(ff.EulerSampler(10), sharp_mixture(), noise(4, 2), 0.3, noise(4, 2)),
     r"grids.interval\(T, 0.3, 1\)"),
    (lambda: editing.invert(ff.EulerSampler(10), sharp_mixture(), noise(4, 2)), "runs from t = 1 to t = 0"),
    (lambda: editing.flowedit(ff.EulerSampler(10), sharp_mixture(), noise(4, 2), {}, {}, 0.0, n_avg=0), "n_avg"),
    (lambda: editing.sdedit(ff.EulerSampler(10), sharp_mixture(), noise(4, 2), 0.0, noise(3, 2)), "noise has shape"),
    (lambda: grids.interval(10, 0.5, 0.5), "distinct"),
])
def test_bad_edit_settings_fail_before_any_model_call(call, message):
    with pytest.raises(ValueError, match=message):
        call()


class Mixtures:
    """Two conditions whose flows are curved Gaussian mixtures, so FlowEdit's difference field
    depends on the noise it is evaluated with."""

    def __init__(self):
        self.flows = [sharp_mixture(), ff.toy.GaussianMixtureFlow([[-1.0, -1.5], [1.5, 1.5]], [0.3, 0.25])]

    def __call__(self, x, t, y=0):
        return self.flows[y](x=x, t=t)


def test_shared_noise_is_one_draw_for_the_whole_run_and_fresh_noise_a_draw_per_time():
    src = noise(8, 2)
    shared = editing.FlowEditField(Mixtures(), src, {"y": 0}, {"y": 1}, n_avg=2, noise="shared")
    fresh = editing.FlowEditField(Mixtures(), src, {"y": 0}, {"y": 1}, n_avg=2, noise="fresh")
    assert torch.equal(shared.noise(0.2, 1), shared.noise(0.7, 1))
    assert not torch.equal(shared.noise(0.2, 0), shared.noise(0.2, 1))
    assert not torch.equal(fresh.noise(0.2, 0), fresh.noise(0.7, 0))
    assert torch.equal(shared.noise(0.5, 1), fresh.noise(0.0, 1))  # the shared draw is fresh's draw of t = 0
    with pytest.raises(ValueError, match="noise must be one of fresh, shared"):
        editing.FlowEditField(Mixtures(), src, {}, {}, noise="per-step")


def test_fastflow_follows_a_shared_noise_flowedit_and_cannot_follow_a_fresh_one():
    """With a fresh draw per step the difference field jumps from step to step: no extrapolation
    predicts it. With one draw it is smooth in t, and the plan stays on the full-step edit."""
    model, T, K, t_start = Mixtures(), 30, 12, 0.2
    src = ff.EulerSampler(400).sample(model.flows[0], noise(64, 2)).x
    g = grids.interval(T, t_start)
    deviation = {}
    for kind in ("shared", "fresh"):
        full = editing.flowedit(ff.EulerSampler(times=g), model, src, {"y": 0}, {"y": 1}, t_start, noise=kind).x
        s = ff.FastFlowSampler(times=g, calls=K)
        editing.flowedit(s, model, src, {"y": 0}, {"y": 1}, t_start, noise=kind, seed=5)  # calibration, other noise
        fast = editing.flowedit(s, model, src, {"y": 0}, {"y": 1}, t_start, noise=kind)
        assert fast.nfe == K
        deviation[kind] = float((fast.x - full).norm() / full.norm())
        assert float((full - src).norm() / src.norm()) > 0.5  # the edit moves the points far
    assert deviation["shared"] < 0.05 and deviation["fresh"] > 0.3
    assert deviation["shared"] < deviation["fresh"] / 10


def _edit_setup(T=20, t0=0.3):
    model, src = TwoClasses(), ff.toy.GaussianFlow(TwoClasses.MEANS[0], 0.4).solution(noise(16, 2))
    s = ff.FastFlowSampler(times=grids.interval(T, t0), calls=8)
    editing.sdedit(s, model, src, t0, noise(16, 2, seed=1), y=1)
    return model, src, s


def test_an_edit_state_round_trips_and_replays_the_same_edit(tmp_path):
    model, src, s = _edit_setup()
    z = noise(16, 2, seed=2)
    want = editing.sdedit(s, model, src, 0.3, z, y=1)
    path = tmp_path / "edit.json"
    editing.save_state(path, [s], method="sdedit", t0=0.3, cfg=2.0, target="1")
    fresh = ff.FastFlowSampler(times=grids.interval(20, 0.3), calls=8)
    editing.load_state(path, [fresh], method="sdedit", t0=0.3, cfg=2.0, target="1")
    model.calls = 0
    got = editing.sdedit(fresh, model, src, 0.3, z, y=1)
    assert model.calls == 8 and not got.info.get("calibration_run")  # no calibration run: the state was loaded
    assert torch.equal(got.x, want.x)


@pytest.mark.parametrize("change, message", [
    (dict(method="flowedit"), "saved for method = 'sdedit', this edit has method = 'flowedit'"),
    (dict(t0=0.4), "saved for t0 = 0.3, this edit has t0 = 0.4"),
    (dict(cfg=1.0), "saved for cfg = 2.0"),
    (dict(noise="shared"), r"saved for noise = '\(unset\)'"),
])
def test_an_edit_state_is_refused_for_another_edit_and_changes_nothing(tmp_path, change, message):
    _, _, s = _edit_setup()
    path = tmp_path / "edit.json"
    settings = dict(method="sdedit", t0=0.3, cfg=2.0)
    editing.save_state(path, [s], **settings)
    target = ff.FastFlowSampler(times=grids.interval(20, 0.3), calls=8)
    with pytest.raises(ValueError, match=message):
        editing.load_state(path, [target], **{**settings, **change})
    assert target.state_dict()["calibrated"] is False


def test_an_edit_state_is_refused_for_another_grid_or_number_of_passes_and_loads_all_or_nothing(tmp_path):
    _, _, s = _edit_setup()
    path = tmp_path / "edit.json"
    editing.save_state(path, [s, s], method="invert")
    one = ff.FastFlowSampler(times=grids.interval(20, 0.3), calls=8)
    with pytest.raises(ValueError, match="edit state has 2 passes, this edit has 1"):
        editing.load_state(path, [one], method="invert")
    good, other_grid = ff.FastFlowSampler(times=grids.interval(20, 0.3), calls=8), \
        ff.FastFlowSampler(times=grids.interval(20, 0.4), calls=8)
    with pytest.raises(ValueError, match="pass 2: "):
        editing.load_state(path, [good, other_grid], method="invert")
    assert good.state_dict()["calibrated"] is False  # the first pass was not loaded either
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not an edit state file"):
        editing.load_state(path, [good], method="invert")
    with pytest.raises(ValueError, match="keeps no state"):
        editing.save_state(path, [ff.EulerSampler(10)], method="invert")


def test_fresh_noise_never_repeats_a_draw_across_the_times_of_a_grid():
    """torch's CPU generator keeps 32 bits of its seed; a key that is affine in t collides there
    (times a multiple of 1/16 apart drew the same noise once)."""
    field = editing.FlowEditField(Mixtures(), noise(4, 2), {}, {}, n_avg=2, noise="fresh")
    draws = {tuple(field.noise(float(t), i).flatten().tolist()) for t in grids.interval(50, 0.0) for i in range(2)}
    assert len(draws) == 51 * 2
