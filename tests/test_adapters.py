"""fastflow.adapters: a model in another time convention gives, wrapped, the samples of the original loop."""
import pytest
import torch

import fastflow as ff
from fastflow import grids
from fastflow.adapters import CONVENTIONS, Convention, adapt
from problems import mixture, noise


def reversed_model(flow, scale=1.0, names=("x", "t")):
    """The flow written as SD3 writes it: time sigma = 1 - t (noise at 1), prediction noise - data."""
    def model(**kw):
        x, tau = kw[names[0]], kw[names[1]] / scale
        return -flow(x, 1 - tau)
    return model


def hand_loop(model, x, sigmas, scale=1.0, names=("x", "t")):
    """A diffusers-style Euler loop in sigma: x <- x + (sigma_{k+1} - sigma_k) * model(x, sigma_k)."""
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        out = model(**{names[0]: x, names[1]: torch.full((x.shape[0],), s * scale, dtype=x.dtype)})
        x = x + (s_next - s) * out
    return x


@pytest.mark.parametrize("name, scale, names", [("sigma", 1.0, ("x", "t")), ("sd3", 1000.0, ("hidden_states", "timestep"))])
def test_reversed_time_model_gives_the_hand_loop_samples(name, scale, names):
    flow, x0 = mixture(), noise(16, 2)
    t = grids.shifted(20, 3.0)
    sigmas = 1 - t  # 1 -> 0
    model = reversed_model(flow, scale, names)
    ours = ff.EulerSampler(times=t).sample(adapt(model, name), x0).x
    torch.testing.assert_close(ours, hand_loop(model, x0, sigmas, scale, names), rtol=0, atol=1e-12)
    # and it is the original flow's Euler run on the same grid
    torch.testing.assert_close(ours, ff.EulerSampler(times=t).sample(flow, x0).x, rtol=0, atol=1e-12)


def test_outputs_in_tuples_or_objects_and_field_overrides():
    flow, x0 = mixture(), noise(4, 2)

    class Out:
        def __init__(self, sample):
            self.sample = sample
    as_tuple = lambda x, t: (flow(x, t), "extra")  # noqa: E731
    as_object = lambda x, t: Out(flow(x, t))  # noqa: E731
    ref = ff.EulerSampler(6).sample(flow, x0).x
    for model in (as_tuple, as_object):
        torch.testing.assert_close(ff.EulerSampler(6).sample(adapt(model, "fastflow"), x0).x, ref)
    a = adapt(reversed_model(flow, 1000.0), "sigma", scale=1000.0)
    torch.testing.assert_close(ff.EulerSampler(6).sample(a, x0).x, ref, rtol=0, atol=1e-12)
    assert set(CONVENTIONS) >= {"fastflow", "sigma", "sd3"}


def test_bad_conventions_are_named():
    with pytest.raises(ValueError, match=r"unknown convention 'edm'; choose from \['fastflow', 'sd3', 'sigma'\]"):
        adapt(lambda x, t: x, "edm")
    with pytest.raises(ValueError, match="prediction must be one of"):
        Convention(prediction="epsilon")
    with pytest.raises(ValueError, match="noise_at must be 0 or 1"):
        adapt(lambda x, t: x, noise_at=0.5)
    with pytest.raises(TypeError):
        adapt(lambda x, t: x, "sd3", time_scale=3)
    with pytest.raises(TypeError, match="expected a tensor"):
        ff.EulerSampler(3).sample(adapt(lambda x, t: [1, 2]), noise(2, 2))
