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


def write_idx(folder, prefix, images, labels):
    """MNIST-format files ``<prefix>-images-idx3-ubyte.gz`` and ``<prefix>-labels-idx1-ubyte.gz`` in
    ``folder`` (created), from uint8 images (N, H, W) and labels (N,): the real on-disk format."""
    import gzip
    import os
    os.makedirs(folder, exist_ok=True)
    for name, arr, magic in [(f"{prefix}-images-idx3-ubyte.gz", images, 2051), (f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)]:
        header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(os.path.join(folder, name), "wb") as f:
            f.write(header + arr.tobytes())
    return folder


def fake_digits(n, seed=0):
    """n random uint8 28 x 28 images and the labels 0..9 in turn."""
    import numpy as np
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)
