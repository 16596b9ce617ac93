"""The error table and the optimal skip plan: exact against brute force, and its contract."""
import itertools

import pytest
import torch

import fastflow as ff
from problems import mixture, noise


def brute_force(table, T, K, p, R):
    """Least summed table error over every feasible skip set with K calls (reals 0..p and T-1)."""
    best = float("inf")
    for S in itertools.combinations(range(p + 1, T - 1), T - K):
        run, ok = 0, True
        for j in range(T):
            run = run + 1 if j in S else 0
            ok &= run <= R
        if ok:
            best = min(best, ff.plan.plan_cost(table, T, S, p))
    return best


@pytest.mark.parametrize("order, T, R", [(1, 10, 2), (1, 12, 3), (2, 10, 3), (3, 11, 2)])
def test_plan_is_the_exact_minimiser_over_every_feasible_skip_set(order, T, R):
    g = torch.Generator().manual_seed(order * 100 + T)
    table = torch.rand(ff.errors.table_shape(T, order, R), generator=g, dtype=torch.float64)
    costs = ff.plan.planned_costs(table, T, order, R)
    for K in range(ff.plan.min_calls(T, order, R), T + 1):
        skip = ff.plan_skips(table, T, K, order, R)
        assert len(skip) == T - K and all(order < j < T - 1 for j in skip)
        best = brute_force(table, T, K, order, R)
        assert ff.plan.plan_cost(table, T, skip, order) == pytest.approx(best, rel=1e-12, abs=1e-15)
        assert float(costs[K]) == pytest.approx(best, rel=1e-12, abs=1e-15)
    assert torch.isinf(costs[:ff.plan.min_calls(T, order, R)]).all()


def test_min_calls_is_the_true_minimum():
    T, R, p = 50, 4, 1
    lo = ff.plan.min_calls(T, p, R)
    assert lo == 12  # 38 skips in runs of <= 4 after the 10 reals 1..48 that can start a run
    table = torch.ones(ff.errors.table_shape(T, p, R), dtype=torch.float64)
    assert len(ff.plan_skips(table, T, lo, p, R)) == T - lo
    with pytest.raises(ValueError, match=r"calls must be an int in \[12, 50\]"):
        ff.plan_skips(table, T, lo - 1, p, R)


def test_table_entries_are_relative_errors_of_newton_extrapolation_on_an_uneven_grid():
    flow, x0 = mixture(), noise(32, 2)
    times = torch.tensor([0.0, 0.05, 0.2, 0.3, 0.45, 0.5, 0.7, 0.75, 0.9, 0.97], dtype=torch.float64)
    vs = [flow(x=x0 * (1 - t) + t, t=t.expand(32)) for t in times]
    for order, R in ((1, 2), (2, 1)):
        table = ff.errors.error_table(times, vs, order, R)
        assert table.shape == ff.errors.table_shape(10, order, R)
        checked = 0
        for idx in itertools.product(*(range(n) for n in table.shape)):
            k, gaps, lead = idx[0], idx[1:-1], idx[-1]
            nodes = [k - sum(gaps[:r]) for r in range(order + 1)]
            if lead == 0 or 0 in gaps:
                continue
            if nodes[-1] < 0 or k + lead > 9:
                assert torch.isinf(table[idx]), idx
                continue
            v_hat = ff.extrapolate.newton_extrapolate([times[n].item() for n in nodes[::-1]], [vs[n] for n in nodes[::-1]],
                                          times[k + lead].item())
            want = ((v_hat - vs[k + lead]).norm() / vs[k + lead].norm()).item()
            assert table[idx].item() == pytest.approx(want, rel=1e-9), idx
            checked += 1
        assert checked > 20


def test_relative_error_does_not_depend_on_the_scale_of_the_model():
    flow, x0, T = mixture(), noise(64, 2), 20
    a = ff.FastFlowSampler(T)
    a.sample(flow, x0)  # the calibration run records the table of Euler's trajectory
    finite = torch.isfinite(a.table)
    times = [k / T for k in range(T)]
    traj = ff.EulerSampler(T).sample(flow, x0, trace=True).trace
    vs = [flow(x=traj[k], t=torch.full((64,), k / T, dtype=torch.float64)) for k in range(T)]
    t1, t2 = ff.errors.error_table(times, vs, 1, 6), ff.errors.error_table(times, [1e4 * v for v in vs], 1, 6)
    assert torch.equal(torch.isfinite(t1), finite)
    assert torch.allclose(t1[finite], t2[finite], rtol=1e-9, atol=0)
    assert torch.allclose(t1[finite], a.table[finite], rtol=1e-9, atol=0)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(20, 6, 6), "must be"),                      # wrong steps
    (torch.zeros(10, 6), "must be"),                          # missing an axis
    (torch.zeros(10, 6, 5), "length >= max_run"),             # lead axis too short
    (torch.full((10, 6, 6), float("nan")), "NaN"),
])
def test_an_error_table_of_the_wrong_shape_or_values_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        ff.plan_skips(bad, 10, 6, order=1, max_run=4)


def test_lagrange_weights_reproduce_polynomials_of_degree_p():
    nodes = torch.tensor([[0.1, 0.25, 0.3], [0.0, 0.5, 0.6]], dtype=torch.float64)
    t = torch.tensor([0.45, 0.9], dtype=torch.float64)
    c = ff.errors.lagrange_weights(nodes, t)
    for poly in (lambda s: 1 + 0 * s, lambda s: 2 - 3 * s, lambda s: 0.5 * s ** 2 - s + 4):
        assert torch.allclose((c * poly(nodes)).sum(1), poly(t), atol=1e-12)
