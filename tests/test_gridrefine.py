"""fastflow.gridrefine.refine_times: coordinate descent on a measured deviation, checked on functions
whose minimum is known, on exact evaluation counts, on the grid invariants and on bad input."""
import pytest
import torch

import fastflow as ff
from fastflow.gridrefine import refine_times


class Recorder:
    """d(times) = squared distance of the interior times to a target grid; keeps every grid asked."""

    def __init__(self, target):
        self.target, self.asked = torch.as_tensor(target, dtype=torch.float64), []

    def __call__(self, times):
        self.asked.append(times.clone())
        return float(((times - self.target) ** 2).sum())


def test_it_walks_to_a_known_minimum_keeping_the_ends_and_the_order():
    target = [0.0, 0.05, 0.2, 0.5, 0.9, 1.0]
    d = Recorder(target)
    out = refine_times(torch.linspace(0, 1, 6), d, max_evals=2000, min_step=1 / 4096)
    assert torch.allclose(out.times, torch.tensor(target, dtype=torch.float64), atol=2e-3)
    values = [float(((t - d.target) ** 2).sum()) for t in d.asked]
    assert out.evals == len(d.asked) and out.deviation == min(values) < values[0]
    for grid in d.asked:  # every grid it tried: ends fixed, strictly increasing
        assert grid[0] == 0 and grid[-1] == 1 and bool((grid[1:] > grid[:-1]).all())


def test_the_budget_of_evaluations_is_never_exceeded_and_the_start_is_kept_when_nothing_helps():
    d = Recorder([0.0, 0.3, 1.0])
    out = refine_times([0.0, 0.3, 1.0], d, max_evals=7)
    assert out.evals == len(d.asked) == 7 and out.deviation == 0.0 and out.times.tolist() == [0.0, 0.3, 1.0]
    # with the start's deviation given, it is not measured again: two moves per sweep, one sweep per
    # s = 1/4, 1/8, 1/16, 1/32, 1/64, and nothing else
    d = Recorder([0.0, 0.3, 1.0])
    out = refine_times([0.0, 0.3, 1.0], d, max_evals=100, start_deviation=0.0)
    assert out.evals == len(d.asked) == 2 * 5 and out.times.tolist() == [0.0, 0.3, 1.0]


def test_two_points_have_nothing_to_move():
    d = Recorder([0.0, 1.0])
    out = refine_times([0.0, 1.0], d, max_evals=50)
    assert out.evals == 1 and out.times.tolist() == [0.0, 1.0]


def test_on_a_toy_flow_the_tuned_unipc_grid_replays_closer_to_the_exact_solution():
    """The use in fastflow.choice: d is a K-call replay against a reference, on the same noise."""
    flow = ff.toy.GaussianMixtureFlow([[2.0, 0.0], [-2.0, 1.0]], [0.2, 0.3])
    x0 = torch.randn(512, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = ff.HeunSampler(1000).sample(flow, x0).x

    def d(times):
        x = ff.UniPCSampler(times=times).sample(flow, x0).x
        return float((x - exact).norm() / exact.norm())

    start = ff.UniPCSampler(6).times
    out = refine_times(start, d, max_evals=60)
    assert out.deviation < 0.7 * d(start) and out.deviation == pytest.approx(d(out.times), rel=1e-12)


@pytest.mark.parametrize("times, kwargs, message", [
    ([0.0], {}, "at least 2 finite, strictly increasing"),
    ([0.0, 0.5, 0.5, 1.0], {}, "strictly increasing"),
    ([0.0, float("nan"), 1.0], {}, "finite"),
    ([0.0, 1.0], dict(max_evals=0), "max_evals must be an int >= 1"),
    ([0.0, 1.0], dict(max_evals=True), "max_evals must be an int >= 1"),
    ([0.0, 1.0], dict(step=1.0), "need 0 < min_step <= step < 1"),
    ([0.0, 1.0], dict(step=0.1, min_step=0.2), "need 0 < min_step <= step < 1"),
])
def test_bad_input_is_refused_before_any_evaluation(times, kwargs, message):
    d = Recorder([0.0, 1.0])
    with pytest.raises(ValueError, match=message):
        refine_times(times, d, **{"max_evals": 10, **kwargs})
    assert d.asked == []
