import pytest
import torch

import fastflow as ff
from problems import gaussian, mixture, noise


def test_gaussian_velocity_is_the_time_derivative_of_the_exact_solution():
    flow = gaussian()
    x0 = noise(16, 3)
    for t in (0.1, 0.5, 0.9):
        h = 1e-6
        dxdt = (flow.solution(x0, t + h) - flow.solution(x0, t - h)) / (2 * h)
        v = flow(x=flow.solution(x0, t), t=torch.full((16,), t, dtype=torch.float64))
        assert torch.allclose(v, dxdt, atol=1e-7)
    assert torch.allclose(flow.solution(x0, 0.0), x0)
    assert torch.allclose(flow.solution(x0, 1.0), flow.mean + flow.std * x0)


def test_one_component_mixture_is_the_gaussian_flow():
    g = ff.toy.GaussianFlow([0.3, -1.0], 0.7)
    m = ff.toy.GaussianMixtureFlow([[0.3, -1.0]], [0.7])
    x = noise(8, 2)
    t = torch.linspace(0.05, 0.95, 8, dtype=torch.float64)
    assert torch.allclose(g(x=x, t=t), m(x=x, t=t), atol=1e-12)


def test_mixture_velocity_matches_the_score_identity():
    """For x_t = (1 - t) z + t x1: v(x, t) = (x + (1 - t) grad log p_t(x)) / t."""
    flow = mixture()
    x = noise(32, 2, seed=3) * 2
    for t in (0.2, 0.6, 0.95):
        xr = x.clone().requires_grad_(True)
        s2 = flow.stds ** 2
        var = (1 - t) ** 2 + t ** 2 * s2
        diff = xr[:, None, :] - t * flow.means
        logp = torch.logsumexp(torch.log(flow.weights) - 0.5 * diff.square().sum(-1) / var
                               - torch.log(2 * torch.pi * var), dim=1)
        score, = torch.autograd.grad(logp.sum(), xr)
        expected = (x + (1 - t) * score) / t
        got = flow(x=x, t=torch.full((32,), t, dtype=torch.float64))
        assert torch.allclose(got, expected, atol=1e-10)


def test_mixture_sampling_follows_the_weights():
    flow = ff.toy.GaussianMixtureFlow([[5.0], [-5.0]], [0.1, 0.1], weights=[3.0, 1.0])
    x = flow.sample_data(4000, generator=torch.Generator().manual_seed(0))
    assert abs((x > 0).double().mean().item() - 0.75) < 0.03


def test_mixture_needs_one_std_per_component():
    with pytest.raises(ValueError, match=r"need one std per component \(3\), got 2"):
        ff.toy.GaussianMixtureFlow([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]], [0.3, 0.2])
