"""SkipWrapper: an unchanged loop makes fewer model calls, exactly as FastFlow plans them."""
import pytest
import torch
from torch import nn

import fastflow as ff
from fastflow import grids
from problems import Counted, mixture, noise, rms, sharp_mixture


def test_in_our_euler_loop_it_is_fastflow_with_the_same_plan():
    flow, T, K = sharp_mixture(), 30, 12
    wrapped = ff.SkipWrapper(Counted(flow), calls=K)
    loop = ff.EulerSampler(T)
    first = loop.sample(wrapped, noise(64, 2, seed=1))             # calibration generation
    assert first.nfe == T and wrapped.model.calls == T and not wrapped.calibrated
    second = loop.sample(wrapped, noise(16, 2, seed=2))            # timestep goes back to 0: new generation
    assert wrapped.calibrated and wrapped.last_generation["calibration"]
    reference = ff.FastFlowSampler(T, calls=K)
    reference.sample(flow, noise(64, 2, seed=1))
    assert wrapped.schedule() == reference.schedule()
    wrapped.reset()                                                # end the second generation explicitly
    g = wrapped.last_generation
    assert g["model_calls"] == K and g["skipped_calls"] == T - K and g["skipped_steps"] == reference.schedule()
    assert wrapped.model.calls == T + K and wrapped.model_calls == T + K and wrapped.skipped_calls == T - K
    assert second.nfe == T  # the loop itself does not know: it called the wrapper T times
    torch.testing.assert_close(second.x, reference.sample(flow, noise(16, 2, seed=2)).x, rtol=0, atol=1e-12)


class CFGModel(nn.Module):
    """A reversed-time model (SD3 style: hidden_states, timestep = 1000 sigma, predicts noise - data)
    whose 'condition' shifts the flow, so the two guidance branches differ."""

    def __init__(self, flow):
        super().__init__()
        self.flow, self.calls = flow, 0
        self.config = {"in_channels": 2}
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        self.calls += 1
        sigma = timestep / 1000
        v = self.flow(hidden_states, 1 - sigma) + encoder_hidden_states
        return (-v * self.scale,)


def diffusers_like_loop(model, latents, sigmas, guidance, cond, uncond, batched):
    """The scheduler loop of a flow-matching pipeline: CFG batched (one call) or as two calls per step."""
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        ts = torch.full((latents.shape[0],), 1000 * s, dtype=latents.dtype)
        if batched:
            out = model(hidden_states=torch.cat([latents, latents]), timestep=torch.cat([ts, ts]),
                        encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
            u, c = out.chunk(2)
        else:
            u = model(hidden_states=latents, timestep=ts, encoder_hidden_states=uncond, return_dict=False)[0]
            c = model(hidden_states=latents, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]
        latents = latents + (s_next - s) * (u + guidance * (c - u))
    return latents


@pytest.mark.parametrize("batched", [True, False])
def test_an_unchanged_cfg_loop_makes_exactly_the_planned_calls(batched):
    flow, T, K = mixture(), 28, 12
    sigmas = 1 - grids.shifted(T, 3.0)
    cond, uncond = torch.full((8, 2), 0.3, dtype=torch.float64), torch.zeros(8, 2, dtype=torch.float64)
    model = CFGModel(flow).double()
    wrapped = ff.SkipWrapper(model, calls=K)
    run = lambda m, seed: diffusers_like_loop(m, noise(8, 2, seed=seed), sigmas, 2.0, cond, uncond, batched)  # noqa: E731
    branches = 1 if batched else 2
    run(wrapped, 1)
    assert model.calls == branches * T
    fast = run(wrapped, 2)
    wrapped.reset()
    assert model.calls == branches * (T + K)
    assert wrapped.last_generation["skipped_calls"] == branches * (T - K)
    assert len(wrapped.last_generation["skipped_steps"]) == T - K
    full = run(model, 2)
    assert 0 < rms(fast, full) < 0.1 * rms(full, noise(8, 2, seed=2))
    assert wrapped.config == {"in_channels": 2}                  # attributes come from the model
    assert [n for n, _ in wrapped.named_parameters()] == ["model.scale"]


def test_generations_and_resets():
    flow = mixture()
    wrapped = ff.SkipWrapper(flow, calls=6)
    x = noise(4, 2)
    ff.EulerSampler(10).sample(wrapped, x)
    wrapped.reset()
    assert wrapped.calibrated and wrapped.last_generation["steps"] == 10
    wrapped.reset()  # nothing running: a no-op
    ff.EulerSampler(10).sample(wrapped, x)
    ff.EulerSampler(10).sample(wrapped, x)  # back to t = 0: the previous generation ends by itself
    assert wrapped.model_calls == 10 + 6 + 6 and wrapped.last_generation["model_calls"] == 6
    wrapped.recalibrate()
    assert not wrapped.calibrated
    with pytest.raises(ValueError, match="no schedule before"):
        wrapped.schedule()


def test_bad_calls_are_named():
    flow = mixture()
    wrapped = ff.SkipWrapper(flow, calls=6)
    with pytest.raises(ValueError, match="timestep must be a number, a 0-d tensor or a \\(batch,\\) tensor"):
        wrapped(x=noise(2, 2), t=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="the same for the whole batch"):
        wrapped(x=noise(2, 2), t=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="cannot find the timestep"):
        wrapped(noise(2, 2))

    shapes = iter([(2, 2), (2, 3)])
    changing = ff.SkipWrapper(lambda x, t: torch.zeros(next(shapes)), calls=6)
    changing(x=noise(2, 2), t=0.0)
    with pytest.raises(ValueError, match=r"output changed shape from \(2, 2\) to \(2, 3\)"):
        changing(x=noise(2, 2), t=0.1)

    ff.EulerSampler(10).sample(wrapped, noise(2, 2))
    wrapped.reset()
    with pytest.raises(ValueError, match="more than the 10 steps"):
        ff.EulerSampler(12).sample(wrapped, noise(2, 2))
    with pytest.raises(ValueError, match="unknown policy"):
        ff.SkipWrapper(flow, policy="greedy")


@pytest.mark.parametrize("policy", ["bandit", "paper"])
def test_learning_policies_learn_through_the_wrapper(policy):
    flow, T, K = sharp_mixture(), 30, 14
    wrapped = ff.SkipWrapper(flow, calls=K, policy=policy)
    for seed in range(6):
        ff.EulerSampler(T).sample(wrapped, noise(16, 2, seed=seed).float())
    wrapped.reset()
    calls = wrapped.last_generation["model_calls"]
    assert calls == K or (policy == "paper" and abs(calls - K) <= 4)
    assert wrapped.host_reads >= 1  # calibration table, then one read of the errors per generation
