"""Toy problems shared by the tests (float64 throughout)."""
import torch

import fastflow as ff


def gaussian():
    return ff.toy.GaussianFlow(mean=[1.5, -0.5, 0.25], std=0.5)


def mixture():
    """Three well-separated components in 2-D; smooth enough for asymptotic rates by T = 50."""
    return ff.toy.GaussianMixtureFlow([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]], [0.5, 0.4, 0.6])


def sharp_mixture():
    """Narrower components: the velocity bends late, as for image models."""
    return ff.toy.GaussianMixtureFlow([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]], [0.3, 0.2, 0.4])


def noise(n, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64)


class Counted:
    """Wraps a velocity and counts its calls, recording the times and extras it saw."""

    def __init__(self, velocity):
        self.velocity = velocity
        self.calls = 0
        self.times = []
        self.extras = []

    def __call__(self, x, t, **extras):
        self.calls += 1
        self.times.append(t.clone())
        self.extras.append(extras)
        return self.velocity(x=x, t=t)


def rms(a, b):
    return (a - b).square().sum(-1).mean().sqrt().item()
