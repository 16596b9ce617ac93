"""Any time grid: the grids' formulas, bad grids, and every sampler's accuracy and accounting on uneven grids."""
import math

import pytest
import torch

import fastflow as ff
from fastflow import grids
from fastflow.solvers import AB_COEFFICIENTS, ab_coefficients
from problems import Counted, gaussian, mixture, noise, rms


def test_grid_formulas():
    torch.testing.assert_close(grids.uniform(4), torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    torch.testing.assert_close(grids.shifted(10, 1.0), grids.uniform(10))
    s = 1 - torch.arange(9, dtype=torch.float64) / 8
    torch.testing.assert_close(grids.shifted(8, 3.0), 1 - 3 * s / (1 + 2 * s))
    assert (grids.shifted(8, 3.0).diff()[:2] < 1 / 8).all()  # shift > 1: small steps near the noise
    t = grids.edm(6, sigma_min=0.01, sigma_max=50, rho=7)
    sigma = 1 / t[1:-1] - 1
    i = torch.arange(1, 6, dtype=torch.float64) / 5
    expected = (50 ** (1 / 7) + i * (0.01 ** (1 / 7) - 50 ** (1 / 7))) ** 7
    torch.testing.assert_close(sigma, expected)
    for g in (grids.uniform(7), grids.shifted(7, 5.0), grids.edm(7)):
        assert g[0] == 0 and g[-1] == 1 and (g.diff() > 0).all() and g.dtype == torch.float64


@pytest.mark.parametrize("times, match", [
    ([0, 0.5, 0.4, 1], "strictly increasing: it decreases at index 2"),
    ([0, 0.5, 0.5, 1], "repeats at index 2"),
    ([-0.1, 0.5, 1], r"inside \[0, 1\]"),
    ([0, 0.5, 1.1], r"inside \[0, 1\]"),
    ([1, 0.5, 0.6, 0], "strictly decreasing: it increases at index 2"),
    ([0, 1], "at least 3 points"),
    ([[0, 0.5, 1]], "1-D"),
    ([0, float("nan"), 1], "finite"),
    (["a", "b"], "sequence of numbers"),
])
def test_bad_grids_are_named(times, match):
    with pytest.raises(ValueError, match=match):
        ff.EulerSampler(times=times)
    with pytest.raises(ValueError, match="steps=5 but times has 2 steps"):
        ff.EulerSampler(5, times=[0, 0.5, 1])
    with pytest.raises(ValueError, match="shift must be > 0"):
        grids.shifted(5, 0.0)


def test_euler_on_a_grid_is_the_hand_written_loop():
    flow, x0, t = gaussian(), noise(8, 3), grids.shifted(12, 3.0)
    x = x0.clone()
    for k in range(12):
        x = x + (t[k + 1] - t[k]).item() * flow(x, torch.full((8,), t[k].item(), dtype=x.dtype))
    for sampler in (ff.EulerSampler(times=t), ff.EulerSampler(t), ff.ExtrapolatedEulerSampler(None, [], times=t)):
        torch.testing.assert_close(sampler.sample(flow, x0).x, x, rtol=0, atol=1e-14)
    assert "times=[0, " in repr(ff.EulerSampler(t)) and repr(ff.EulerSampler(grids.uniform(12))) == "EulerSampler(steps=12)"


def test_variable_step_adams_bashforth_weights():
    for p in (1, 2, 3, 4):  # the classical coefficients on a uniform grid
        torch.testing.assert_close(torch.tensor(ab_coefficients([-j * 0.1 for j in range(p)], 0.0, 0.1)),
                                   torch.tensor(AB_COEFFICIENTS[p]), rtol=0, atol=1e-13)
    # on uneven nodes, h sum_j b_j f(t_j) integrates every polynomial of degree <= p - 1 exactly
    nodes, t0, t1 = [0.5, 0.41, 0.2, 0.13], 0.5, 0.72
    for p in (1, 2, 3, 4):
        b = ab_coefficients(nodes[:p], t0, t1)
        for d in range(p):
            exact = (t1 ** (d + 1) - t0 ** (d + 1)) / (d + 1)
            assert (t1 - t0) * sum(bj * tj ** d for bj, tj in zip(b, nodes)) == pytest.approx(exact, rel=1e-12)
    # end to end: v = 2t on an EDM grid; AB2 is exact after its Euler first step, which misses t_1^2
    t, x0 = grids.edm(9), noise(2, 1)
    out = ff.AdamsBashforthSampler(times=t, order=2).sample(lambda x, t: (2 * t)[:, None].expand_as(x), x0)
    torch.testing.assert_close(out.x - x0, torch.full_like(x0, 1.0 - float(t[1]) ** 2), rtol=0, atol=1e-12)


def convergence_slope(make, Ts):
    """Slope of log error against log T on the mixture flow (the Gaussian's AB2 error changes sign)."""
    flow, x0 = mixture(), noise(64, 2)
    exact = ff.HeunSampler(4000).sample(flow, x0).x
    errs = [rms(make(T).sample(flow, x0).x, exact) for T in Ts]
    return math.log(errs[0] / errs[-1]) / math.log(Ts[-1] / Ts[0])


@pytest.mark.parametrize("make, order", [
    (lambda T: ff.EulerSampler(times=grids.shifted(T, 3.0)), 1),
    (lambda T: ff.HeunSampler(times=grids.shifted(T, 3.0)), 2),
    (lambda T: ff.AdamsBashforthSampler(times=grids.shifted(T, 3.0), order=2), 2),
    (lambda T: ff.AdamsBashforthSampler(times=grids.shifted(T, 3.0), order=3), 3),
])
def test_orders_hold_on_a_shifted_grid(make, order):
    assert convergence_slope(make, [40, 160]) == pytest.approx(order, abs=0.2)


def test_order_p_extrapolation_is_exact_for_degree_p_velocity_on_a_shifted_grid():
    t = grids.shifted(16, 3.0)
    for p, f in [(1, lambda s: 2 * s - 1), (2, lambda s: 3 * s ** 2 - s), (3, lambda s: s ** 3 - 2 * s)]:
        v = Counted(lambda x, t: f(t)[:, None].expand_as(x))
        skip = [p + 1, p + 2, 9, 10, 11, 13]
        out = ff.ExtrapolatedEulerSampler(None, skip, order=p, times=t).sample(v, noise(3, 2))
        full = ff.EulerSampler(times=t).sample(lambda x, t: f(t)[:, None].expand_as(x), noise(3, 2))
        assert out.nfe == v.calls == 16 - len(skip) and out.skipped == sorted(skip)
        torch.testing.assert_close(out.x, full.x, rtol=0, atol=1e-12)


def test_fastflow_on_a_shifted_grid_makes_exactly_its_calls_and_weights_errors_by_step_length():
    t = grids.shifted(28, 3.0)
    flow = gaussian()
    s = ff.FastFlowSampler(times=t, calls=12)
    calib = Counted(flow)
    assert s.sample(calib, noise(32, 3, seed=1)).nfe == 28 == calib.calls
    assert [round(c[0].item(), 12) for c in calib.times] == [round(x, 12) for x in t[:-1].tolist()]
    for seed in (2, 3):
        counted = Counted(flow)
        out = s.sample(counted, noise(16, 3, seed=seed))
        assert out.nfe == counted.calls == 12 and len(out.skipped) == 16
        euler = ff.EulerSampler(times=t).sample(flow, noise(16, 3, seed=seed))
        assert rms(out.x, euler.x) < 0.05
    # the table is the unweighted one times w_j = T dt_j on each target step j
    vs = [torch.randn(4, 3, generator=torch.Generator().manual_seed(j), dtype=torch.float64) for j in range(28)]
    w = (28 * t.diff()).tolist()
    plain = ff.errors.error_table(t[:-1], vs, 1, 3)
    rec = ff.errors.TableRecorder(t[:-1], 1, 3, weights=w)
    for j, v in enumerate(vs):
        rec.add(j, v)
    weighted = rec.table()
    finite = torch.isfinite(plain) & (plain > 0)
    k, g, lead = finite.nonzero().T
    torch.testing.assert_close(weighted[k, g, lead], plain[k, g, lead] * torch.tensor(w)[k + lead])


def test_fastflow_state_remembers_its_grid(tmp_path):
    t = grids.shifted(20, 3.0)
    s = ff.FastFlowSampler(times=t, calls=10)
    s.sample(gaussian(), noise(16, 3))
    s.save_state(tmp_path / "s.json")
    again = ff.FastFlowSampler(times=t, calls=10)
    again.load_state(tmp_path / "s.json")
    assert again.schedule() == s.schedule()
    with pytest.raises(ValueError, match="times="):
        ff.FastFlowSampler(20, calls=10).load_state(tmp_path / "s.json")
    frozen = s.freeze()
    frozen.save(tmp_path / "f.json")
    loaded = ff.ExtrapolatedEulerSampler.load(tmp_path / "f.json")
    torch.testing.assert_close(loaded.times, t)
    assert loaded.skip == frozen.skip


def test_flowturbo_teacache_taylorseer_take_a_grid():
    t = grids.shifted(10, 2.0)
    flow, x0 = gaussian(), noise(8, 3)
    heun = ff.HeunSampler(times=t).sample(flow, x0)
    torch.testing.assert_close(ff.FlowTurboSampler(10, times=t).sample(flow, x0).x, heun.x, rtol=0, atol=1e-14)
    counted = Counted(flow)
    ff.TaylorSeerSampler(times=t, interval=3).sample(counted, x0)
    assert {round(c[0].item(), 12) for c in counted.times} <= {round(x, 12) for x in t.tolist()}
    assert ff.TeaCacheSampler(times=t, threshold=0.0).sample(flow, x0).nfe == 10
