"""The shipped MNIST checkpoint loads through load_model and samples sensible digits.

(The classifier-accuracy check of the samples lives with the classifier.)
"""

import os

import pytest
import torch

from models import load_model

CKPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints", "dit_mnist.pt")


@pytest.fixture(scope="module")
def shipped():
    assert os.path.isfile(CKPT), f"shipped checkpoint missing: {CKPT}"
    return load_model(CKPT)


def test_shipped_checkpoint_metadata(shipped):
    model, config, meta = shipped
    assert (config.image_size, config.in_channels, config.num_classes) == (28, 1, 10)
    assert meta["data"]["name"] == "mnist" and meta["step"] > 0
    assert not model.training
    assert os.path.getsize(CKPT) < 8 * 2**20  # slim: a few MB


@torch.no_grad()
def test_shipped_model_samples_ten_digits(shipped):
    """Euler, 20 steps from noise (t = 0) to data (t = 1), one sample per class."""
    model, config, _ = shipped
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        y = torch.arange(10)
        x = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        steps = 20
        for k in range(steps):
            t = torch.full((10,), k / steps)
            x = x + model.forward_with_cfg(x=x, t=t, y=y, cfg_scale=1.0) / steps
    finally:
        torch.set_num_threads(threads)
    assert x.shape == (10, 1, 28, 28) and torch.isfinite(x).all()
    assert x.min() > -1.6 and x.max() < 1.6, (x.min(), x.max())  # data live in [-1, 1]
    # MNIST is mostly black background (-1) with some white strokes.
    assert -0.95 < x.mean() < -0.45, x.mean()
    assert (x > 0).float().mean(dim=(1, 2, 3)).min() > 0.03  # every sample has ink
    assert (x[1:] - x[:-1]).abs().mean() > 0.1  # different classes give different images


@pytest.mark.parametrize("cfg_scale, min_accuracy", [(1.0, 0.8), (2.0, 0.95)])
def test_euler50_samples_are_the_requested_digits(shipped, cfg_scale, min_accuracy):
    """The project's classifier (99.3% on held-out real digits) reads the requested class."""
    import fastflow as ff
    from models.evaluation import Judge, balanced_labels, make_noise

    model, _, _ = shipped
    y = balanced_labels(60, 10)
    x = ff.EulerSampler(50).sample(model.forward_with_cfg, make_noise(60, (1, 28, 28), seed=1), y=y,
                                   cfg_scale=cfg_scale).x.clamp(-1, 1)
    assert Judge().accuracy(x, y) >= min_accuracy
