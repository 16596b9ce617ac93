import math
import re

import pytest
import torch

import fastflow as ff
from problems import Counted, gaussian, noise, rms


def fitted_order(make, flow, x0, Ts=(8, 16, 32, 64)):
    """Least-squares slope of log2(err) against log2(T), negated, against the exact solution."""
    exact = flow.solution(x0, 1.0)
    errs = [rms(make(T).sample(flow, x0).x, exact) for T in Ts]
    xs, ys = [math.log2(T) for T in Ts], [math.log2(e) for e in errs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


# Each order is fitted where its asymptote holds (and float64 rounding does not yet): a start-up of
# too low an order shows there as a slope near 2 (AB3 and AB4 started with Euler gave 1.9 and 2.0).
@pytest.mark.parametrize("make, order, Ts", [
    (ff.EulerSampler, 1, (64, 128, 256)),
    (ff.HeunSampler, 2, (64, 128, 256)),
    (lambda T: ff.HeunSampler(T, correct_last=False), 2, (64, 128, 256)),
    (lambda T: ff.AdamsBashforthSampler(T, order=2), 2, (128, 256, 512)),
    (lambda T: ff.AdamsBashforthSampler(T, order=3), 3, (256, 512, 1024)),
    (lambda T: ff.AdamsBashforthSampler(T, order=4), 4, (256, 512, 1024)),
])
def test_convergence_order_on_the_gaussian_flow(make, order, Ts):
    p = fitted_order(make, gaussian(), noise(64, 3), Ts)
    assert abs(p - order) < 0.2, p


@pytest.mark.parametrize("order, extra", [(1, 0), (2, 0), (3, 4), (4, 9)])
def test_adams_bashforth_counts_its_runge_kutta_start(order, extra):
    counted = Counted(gaussian())
    sampler = ff.AdamsBashforthSampler(12, order=order)
    out = sampler.sample(counted, noise(2, 3))
    assert out.nfe == counted.calls == sampler.expected_calls() == 12 + extra


@pytest.mark.parametrize("make, calls", [
    (ff.EulerSampler, lambda T: T),
    (ff.HeunSampler, lambda T: 2 * T),
    (lambda T: ff.HeunSampler(T, correct_last=False), lambda T: 2 * T - 1),
    (ff.AdamsBashforthSampler, lambda T: T),
])
def test_nfe_is_counted_exactly(make, calls):
    counted = Counted(gaussian())
    res = make(10).sample(counted, noise(4, 3))
    assert res.nfe == counted.calls == calls(10)
    assert res.skipped == []


def test_velocity_is_called_by_keyword_with_batched_time_and_extras_untouched():
    seen = []

    def velocity(*, x, t, y, scale):
        seen.append((t.shape, t.dtype, y, scale))
        return torch.zeros_like(x)

    labels = torch.tensor([1, 2, 3])
    ff.EulerSampler(4).sample(velocity, torch.zeros(3, 2), y=labels, scale=2.5)
    assert len(seen) == 4
    for shape, dtype, y, scale in seen:
        assert shape == (3,) and dtype == torch.float32 and y is labels and scale == 2.5


def test_grid_runs_from_noise_to_data():
    counted = Counted(gaussian())
    res = ff.EulerSampler(4).sample(counted, noise(2, 3), trace=True)
    assert [t[0].item() for t in counted.times] == [0.0, 0.25, 0.5, 0.75]
    assert len(res.trace) == 5 and torch.equal(res.trace[-1], res.x)


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="steps must be >= 2"):
        ff.EulerSampler(1)
    with pytest.raises(TypeError, match="steps must be an int"):
        ff.HeunSampler(2.5)
    with pytest.raises(ValueError, match="order must be one of"):
        ff.AdamsBashforthSampler(10, order=7)
    with pytest.raises(ValueError, match=r"velocity returned \(3, 1\), expected .*\(3, 2\)"):
        ff.EulerSampler(4).sample(lambda x, t: x[:, :1], torch.zeros(3, 2))
    with pytest.raises(ValueError, match="non-finite"):
        ff.EulerSampler(4).sample(lambda x, t: x / 0.0, torch.zeros(3, 2))
    with pytest.raises(TypeError, match="callable"):
        ff.EulerSampler(4).sample("model", torch.zeros(3, 2))


def test_heun_without_last_correction_never_evaluates_at_t_equal_1():
    counted = Counted(gaussian())
    ff.HeunSampler(5, correct_last=False).sample(counted, noise(2, 3))
    times = [t[0].item() for t in counted.times]
    assert max(times) == 0.8 and len(times) == 9


def test_the_state_keeps_the_dtype_of_x_init_and_integers_are_refused():
    flow = gaussian()
    x0 = noise(4, 3).float()
    for sampler in (ff.EulerSampler(6), ff.AdamsBashforthSampler(6), ff.FastFlowSampler(10, calls=6)):
        out = sampler.sample(lambda x, t: flow(x.double(), t.double()), x0)  # the model answers in float64
        assert out.x.dtype == torch.float32
    with pytest.raises(ValueError, match="x_init must be a floating-point tensor .*torch.int64"):
        ff.EulerSampler(4).sample(flow, torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("shape", [(0, 3), (4, 0)])
def test_an_empty_batch_is_refused_before_any_call(shape):
    calls = []
    s = ff.FastFlowSampler(10, calls=6)
    with pytest.raises(ValueError, match=re.escape(f"x_init must hold at least one sample, got shape {tuple(shape)}")):
        s.sample(lambda x, t: calls.append(1) or -x, torch.zeros(shape))
    assert calls == [] and not s.calibrated  # a calibration on nothing would plan on zeros


@pytest.mark.parametrize("order", [2.0, True, 5])
def test_adams_bashforth_order_must_be_an_int_it_knows(order):
    with pytest.raises(ValueError, match="Adams-Bashforth order must be one of"):
        ff.AdamsBashforthSampler(10, order=order)


def test_planned_error_when_euler_is_exact():
    s = ff.FastFlowSampler(10, calls=6)
    s.sample(lambda x, t: torch.ones_like(x), torch.zeros(4, 2))  # constant velocity: Euler and every skip exact
    assert s.planned_error() == 0.0
