"""Skipping on an Adams-Bashforth-2 base: equal to AB2 without skips, the predicted orders, and the
exact-flow comparison at equal calls."""
import math

import pytest
import torch

import fastflow as ff
from fastflow import grids
from problems import Counted, gaussian, noise, rms, sharp_mixture


@pytest.mark.parametrize("times", [grids.uniform(20), grids.shifted(20, 3.0)])
def test_without_skips_it_is_ab2(times):
    flow, x0 = sharp_mixture(), noise(16, 2)
    ab2 = ff.AdamsBashforthSampler(times=times, order=2).sample(flow, x0).x
    fixed = ff.ExtrapolatedEulerSampler(None, [], times=times, base="ab2").sample(flow, x0).x
    calibration = ff.FastFlowSampler(times=times, calls=10, base="ab2").sample(flow, x0).x  # all steps real
    torch.testing.assert_close(fixed, ab2, rtol=0, atol=1e-14)
    torch.testing.assert_close(calibration, ab2, rtol=0, atol=1e-14)


def slope(errors, Ts):
    return math.log(errors[0] / errors[-1]) / math.log(Ts[-1] / Ts[0])


@pytest.mark.parametrize("order", [1, 2])
def test_predicted_orders_on_the_gaussian_flow(order):
    """Every other step skipped (|S| ~ T / 2): deviation from full AB2 ~ |S| dt^(p+2) ~ T^-(p+1),
    error against the exact solution ~ T^-2 (AB2's own); on the Euler base the latter is T^-1."""
    flow, x0 = gaussian(), noise(64, 3)
    exact = flow.solution(x0)
    Ts = (64, 256)
    dev, err, err_euler = [], [], []
    for T in Ts:
        skip = ff.caching.static_skip_schedule(T, order)
        fast = ff.ExtrapolatedEulerSampler(T, skip, order, base="ab2").sample(flow, x0).x
        dev.append(rms(fast, ff.AdamsBashforthSampler(T, order=2).sample(flow, x0).x))
        err.append(rms(fast, exact))
        err_euler.append(rms(ff.ExtrapolatedEulerSampler(T, skip, order).sample(flow, x0).x, exact))
    assert slope(dev, Ts) == pytest.approx(order + 1, abs=0.2)
    assert slope(err, Ts) == pytest.approx(2, abs=0.2)
    assert slope(err_euler, Ts) == pytest.approx(1, abs=0.2)


def test_fastflow_ab2_makes_its_calls_and_beats_ab2_at_equal_calls_against_the_exact_flow():
    flow, x0, K = sharp_mixture(), noise(256, 2, seed=5), 16
    exact = ff.AdamsBashforthSampler(2000, order=4).sample(flow, x0).x
    s = ff.FastFlowSampler(50, calls=K, base="ab2")
    s.sample(flow, noise(256, 2, seed=6))
    counted = Counted(flow)
    out = s.sample(counted, x0)
    assert out.nfe == counted.calls == K
    plain = ff.AdamsBashforthSampler(K, order=2).sample(flow, x0).x
    on_euler = ff.FastFlowSampler(50, calls=K)
    on_euler.sample(flow, noise(256, 2, seed=6))
    assert rms(out.x, exact) < 0.9 * rms(plain, exact)
    assert rms(out.x, exact) < 0.5 * rms(on_euler.sample(flow, x0).x, exact)


def test_base_is_part_of_the_state_and_the_frozen_schedule(tmp_path):
    flow = sharp_mixture()
    s = ff.FastFlowSampler(30, calls=12, base="ab2")
    s.sample(flow, noise(32, 2))
    s.save_state(tmp_path / "s.json")
    with pytest.raises(ValueError, match="base='ab2' \\(sampler has 'euler'\\)"):
        ff.FastFlowSampler(30, calls=12).load_state(tmp_path / "s.json")
    again = ff.FastFlowSampler(30, calls=12, base="ab2")
    again.load_state(tmp_path / "s.json")
    frozen = again.freeze()
    frozen.save(tmp_path / "f.json")
    loaded = ff.ExtrapolatedEulerSampler.load(tmp_path / "f.json")
    assert loaded.base == "ab2" and loaded.skip == frozen.skip and "base='ab2'" in repr(s)
    x0 = noise(8, 2, seed=3)
    torch.testing.assert_close(loaded.sample(flow, x0).x, s.sample(flow, x0).x, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="base must be one of"):
        ff.FastFlowSampler(30, base="rk4")
