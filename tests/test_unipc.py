"""UniPC: equal to diffusers' scheduler on its grid, its orders, its calls and its errors."""
import math
import warnings

import numpy as np
import pytest
import torch

import fastflow as ff
from fastflow import grids
from fastflow.choice import deviation
from fastflow.unipc import UniPCSampler
from problems import Counted, gaussian, mixture, noise, rms

diffusers = pytest.importorskip("diffusers")


def flow_sigma_times(K, train_steps=1000):
    """Our grid for diffusers' ``use_flow_sigmas=True, flow_shift=1.0``: sigma_i = linspace(1, 1/N, K + 1)[i]
    for i < K, the first one moved to 1 - 1e-6 (so that log(1 - sigma) is finite), sigma_K = 0, all
    rounded to float32; our t = 1 - sigma (exact in float64)."""
    sigmas = np.linspace(1, 1 / train_steps, K + 1)[:-1]
    sigmas[0] -= 1e-6
    sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
    return sigmas, 1 - sigmas.double()


def diffusers_unipc(flow, x0, K, order, solver="bh2", sigmas=None):
    """diffusers' UniPCMultistepScheduler driven by a plain loop; its model output is noise - data = -v.
    ``sigmas``: the K sigmas a pipeline may pass (``set_timesteps(sigmas=)``), else its own flow grid.
    Returns the result and the K + 1 sigmas it stepped on."""
    sched = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                              solver_type=solver, solver_order=order, flow_shift=1.0)
    sched.set_timesteps(K, sigmas=sigmas)
    if sigmas is None:
        assert torch.equal(sched.sigmas, flow_sigma_times(K)[0])  # the grid worked out above is the one it steps on
    x = x0.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, timestep in enumerate(sched.timesteps):
            t = (1 - sched.sigmas[i].double()).expand(x.shape[0])
            x = sched.step(-flow(x, t), timestep, x).prev_sample
    return x, sched.sigmas


@pytest.mark.parametrize("K", [6, 10, 20])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_it_is_diffusers_unipc_on_the_same_grid(order, K):
    flow, x0 = mixture(), noise(64, 2)
    theirs, _ = diffusers_unipc(flow, x0, K, order)
    _, times = flow_sigma_times(K)
    ours = UniPCSampler(times=times, order=order).sample(flow, x0).x
    assert (ours - theirs).norm() / theirs.norm() < 1e-5  # measured 1e-8 (diffusers' float32 coefficients)
    plain = UniPCSampler(times=times, order=order, corrector=False).sample(flow, x0).x
    assert (plain - theirs).norm() / theirs.norm() > 1e-3  # and the corrector is what makes it so


def test_first_order_without_corrector_is_euler_on_any_grid():
    flow, x0, times = mixture(), noise(16, 2), grids.shifted(9, 3.0)
    ours = UniPCSampler(times=times, order=1, corrector=False).sample(flow, x0).x
    assert torch.allclose(ours, ff.EulerSampler(times=times).sample(flow, x0).x, rtol=0, atol=1e-12)


def last_ratio(order, corrector, t0, t1, Ts, lower_order_final=False, solver="bh2"):
    """log2(err_T / err_2T) of the last pair of Ts against the Gaussian flow's exact solution, from x(t0)."""
    flow, z = gaussian(), noise(64, 3)
    start, exact = flow.solution(z, t0), flow.solution(z, t1)
    errs = [rms(UniPCSampler(times=grids.interval(T, t0, t1), order=order, corrector=corrector,
                             solver=solver, lower_order_final=lower_order_final).sample(flow, start).x, exact) for T in Ts]
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])]


# Away from t = 1, with full order to the last step: UniP-p is of order p, the corrector adds one.
# Measured on (0.1, 0.9), T = 256 -> 512 -> 1024: 1.00, 2.00, 2.00, 2.99, 3.97 (the last pair here);
# with B(h) = h ("bh1"), UniPC-1 and UniPC-2 give 2.00 and 3.00.
# Two limits show in the orders: the first step is UniPC-1 (no earlier outputs yet), whose local
# error is O(h^2) without the corrector (so UniP-3 drifts to 2: 2.41, 2.27, 2.16 at T = 256..1024)
# and O(h^3) with it (order 3 at most; on this Gaussian that term is still hidden by T = 4096, on the
# toy mixture UniPC-3 goes 3.6, 3.4, 3.2, 3.1 from T = 128 to 2048).
@pytest.mark.parametrize("order, corrector, solver, expected, tol", [
    (1, False, "bh2", 1, 0.1), (1, True, "bh2", 2, 0.1), (2, False, "bh2", 2, 0.1), (2, True, "bh2", 3, 0.1),
    (3, True, "bh2", 4, 0.1), (3, False, "bh2", 2, 0.25), (1, True, "bh1", 2, 0.1), (2, True, "bh1", 3, 0.1),
])
def test_it_converges_at_its_order(order, corrector, solver, expected, tol):
    ratios = last_ratio(order, corrector, 0.1, 0.9, (256, 512, 1024), solver=solver)
    assert abs(ratios[-1] - expected) < tol, ratios


# On a grid to t = 1 the last step lands on the data prediction D_{T-1} (lambda = inf there), a local
# error O(dt^2): every order is second order at best. Measured 2.04 and 2.02 at T = 512 -> 1024.
@pytest.mark.parametrize("order", [2, 3])
def test_a_grid_to_data_caps_the_order_at_two(order):
    ratios = last_ratio(order, True, 0.0, 1.0, (256, 512, 1024), lower_order_final=True)
    assert abs(ratios[-1] - 2) < 0.1, ratios


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("corrector", [True, False])
def test_one_model_call_per_step(order, corrector):
    counted = Counted(mixture())
    sampler = UniPCSampler(times=grids.shifted(12, 2.0), order=order, corrector=corrector)
    out = sampler.sample(counted, noise(4, 2))
    assert out.nfe == counted.calls == sampler.expected_calls() == 12
    assert [t[0].item() for t in counted.times] == sampler.times[:-1].tolist()  # never at t = 1


def test_bad_settings_get_one_line_errors():
    with pytest.raises(ValueError, match=r"^UniPC order must be one of \[1, 2, 3\], got 4$"):
        UniPCSampler(10, order=4)
    with pytest.raises(ValueError, match="UniPC order must be one of"):
        UniPCSampler(10, order=2.0)
    with pytest.raises(ValueError, match=r"^unknown UniPC solver 'bh3', choose from \['bh1', 'bh2'\]$"):
        UniPCSampler(10, solver="bh3")
    with pytest.raises(ValueError, match="^UniPC integrates towards data only: times must increase"):
        UniPCSampler(times=grids.uniform(10).flip(0))
    with pytest.raises(ValueError, match="solver 'bh1' has B\\(h\\) = -h infinite on the step from t = 0.0"):
        UniPCSampler(10, solver="bh1")  # B(h) = h on the step from lambda = -inf
    for message in [str(e) for e in _errors()]:
        assert "\n" not in message


def _errors():
    for kwargs in (dict(steps=10, order=0), dict(steps=10, solver="x"), dict(times=grids.interval(4, 1.0, 0.0)),
                   dict(steps=10, solver="bh1"), dict(steps=10, corrector=1)):
        try:
            UniPCSampler(**kwargs)
        except ValueError as e:
            yield e
        else:
            raise AssertionError(f"{kwargs} accepted")


def test_a_model_reusing_its_output_buffer_is_refused():
    buffer = torch.zeros(4, 2, dtype=torch.float64)
    flow = mixture()
    with pytest.raises(ValueError, match="reused output buffer"):
        UniPCSampler(6).sample(lambda x, t: buffer.copy_(flow(x, t)), noise(4, 2))


def test_a_chosen_grid_handed_to_diffusers_as_sigmas_is_the_chosen_sampler():
    """What a pipeline with a UniPC scheduler can take from ``fastflow.choice``: its tuned grid as
    ``set_timesteps(sigmas=1 - times[:-1])``. diffusers moves sigma = 1 to 1 - 1e-6 (t = 1e-6); on
    that start the two agree to float32 rounding, and from t = 0 the choice differs by UniPC's
    first-order second step there (module docstring of fastflow.unipc)."""
    flow, calib, x0 = mixture(), noise(256, 2, 5), noise(256, 2, 6)
    s = ff.make_sampler("best", steps=20, calls=8, candidates=["unipc-grid"], refine=30)
    s.sample(flow, calib)
    chosen = s.freeze()
    assert isinstance(chosen, UniPCSampler) and s.choice["refined"]["replays"] > 0
    times = chosen.times
    theirs, sigmas = diffusers_unipc(flow, x0, len(times) - 1, 2, sigmas=(1 - times[:-1]).numpy())
    their_times = 1 - sigmas.double()  # ours in float32, with t = 0 moved to 1e-6
    assert torch.allclose(their_times[1:], times[1:], atol=1e-7) and sigmas[0] == 1 - 1e-6
    on_their_start = UniPCSampler(times=their_times).sample(flow, x0).x
    assert deviation(on_their_start, theirs) < 1e-5
    assert deviation(chosen.sample(flow, x0).x, theirs) < 1e-3  # measured 5.1e-8 and 9.5e-5
