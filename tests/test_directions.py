"""Any interval, either direction: partial generation (t_0 > 0) and inversion (decreasing grids)."""
import math

import pytest
import torch

import fastflow as ff
from fastflow import grids
from problems import Counted, mixture, noise, sharp_mixture


def test_heun_is_exact_backwards_on_a_velocity_linear_in_t():
    a, b = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64)
    velocity = lambda x, t: (a + b * t[:, None]).expand_as(x)  # noqa: E731  x(t) = x(t0) + a (t - t0) + b (t^2 - t0^2) / 2
    x1 = noise(4, 2)
    times = grids.shifted(7, 2.0).flip(0)  # uneven, from 1 (data) down to 0 (noise)
    out = ff.HeunSampler(times=times).sample(velocity, x1)
    torch.testing.assert_close(out.x, x1 - a - b / 2, rtol=0, atol=1e-14)
    partial = ff.HeunSampler(times=torch.linspace(0.8, 0.2, 5, dtype=torch.float64)).sample(velocity, x1)
    torch.testing.assert_close(partial.x, x1 + a * (0.2 - 0.8) + b * (0.2 ** 2 - 0.8 ** 2) / 2, rtol=0, atol=1e-14)


def test_euler_forward_then_backward_returns_at_order_one():
    flow, x0 = mixture(), noise(256, 2)
    errors = []
    for T in (20, 40, 80, 160):
        x1 = ff.EulerSampler(T).sample(flow, x0).x
        back = ff.EulerSampler(times=grids.uniform(T).flip(0)).sample(flow, x1).x
        errors.append((back - x0).norm().item() / x0.norm().item())
    slopes = [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:])]
    assert all(0.85 < s < 1.15 for s in slopes), slopes


@pytest.mark.parametrize("policy", ["plan", "bandit"])
def test_fastflow_makes_exactly_k_calls_on_a_decreasing_grid(policy, tmp_path):
    flow, T, K = sharp_mixture(), 30, 12
    times = grids.uniform(T).flip(0)
    s = ff.FastFlowSampler(times=times, calls=K, policy=policy)
    x1 = ff.EulerSampler(T).sample(flow, noise(64, 2, seed=1)).x
    assert s.calibrate(flow, x1).nfe == T
    for seed in (2, 3):
        data = ff.EulerSampler(T).sample(flow, noise(16, 2, seed=seed)).x
        counted = Counted(flow)
        out = s.sample(counted, data)
        assert out.nfe == counted.calls == K and len(out.skipped) == T - K
        assert all(t0 > t1 for t0, t1 in zip([c[0].item() for c in counted.times], [c[0].item() for c in counted.times][1:]))
        full = ff.EulerSampler(times=times).sample(flow, data).x
        euler_k = ff.EulerSampler(times=grids.uniform(K).flip(0)).sample(flow, data).x
        assert (out.x - full).norm() < 0.75 * (euler_k - full).norm()  # the skips beat Euler at equal calls
    frozen = s.freeze()
    assert frozen.sample(flow, data).nfe == K
    s.save_state(tmp_path / "s.json")
    again = ff.FastFlowSampler(times=times, calls=K, policy=policy)
    again.load_state(tmp_path / "s.json")
    assert again.schedule() == s.schedule()
    with pytest.raises(ValueError, match="times"):
        ff.FastFlowSampler(T, calls=K, policy=policy).load_state(tmp_path / "s.json")


def test_partial_generation_from_a_noised_input_on_a_sub_interval():
    flow, K = sharp_mixture(), 10
    times = torch.linspace(0.3, 1.0, 25, dtype=torch.float64)
    s = ff.FastFlowSampler(times=times, calls=K)
    x03 = ff.EulerSampler(times=torch.linspace(0, 0.3, 10, dtype=torch.float64)).sample(flow, noise(64, 2)).x
    s.calibrate(flow, x03)
    out = s.sample(flow, x03[:16])
    assert out.nfe == K and s.weights == [1.0] * 24  # a uniform sub-interval weighs every step 1


@pytest.mark.parametrize("times, match", [
    ([0, 0.5, 0.4, 1], "strictly increasing: it decreases at index 2"),
    ([1, 0.6, 0.6, 0], "repeats at index 2"),
    ([1, 0.5, 1.2], r"inside \[0, 1\]"),
    ([0.5, 1], "at least 3 points"),
])
def test_grids_that_are_not_monotone_or_leave_the_unit_interval_are_refused(times, match):
    for make in (lambda: ff.EulerSampler(times=times), lambda: ff.FastFlowSampler(times=times, calls=2)):
        with pytest.raises(ValueError, match=match):
            make()
