"""models/refiner.py and scripts/train_refiner.py: zero init, size, guidance, files, distillation, resume,
FlowTurbo."""

import gzip
import os
import sys

import numpy as np
import pytest
import torch

from fastflow import FlowTurboSampler
from models import DiT, build_dit, load_model, save_checkpoint
from models.refiner import (RefinerConfig, SamplerRefiner, VelocityRefiner, base_fingerprint, count_params,
                            load_refiner, parse_turbo, save_refiner)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import train_refiner  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter (so the adaLN-Zero layers are no longer zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def tiny_base(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return randomize_(build_dit("DiT-MNIST-tiny"), seed, scale=0.1).eval()


def inputs(n=6, seed=1, classes=10):
    g = torch.Generator().manual_seed(seed)
    x, u = torch.randn(n, 1, 28, 28, generator=g), torch.randn(n, 1, 28, 28, generator=g)
    return x, torch.rand(n, generator=g), u, torch.randint(0, classes, (n,), generator=g)


class Counted:
    """Wraps a callable and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, **kwargs):
        self.calls += 1
        return self.fn(**kwargs)


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    """A randomised DiT-MNIST-tiny saved as a slim checkpoint."""
    path = tmp_path_factory.mktemp("base") / "base.pt"
    model = tiny_base(0)
    save_checkpoint(path, ema=model.state_dict(), config=model.config)
    return path


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    """48 synthetic 'digits' as MNIST t10k idx files: a class-dependent bar on a dark background."""
    root = tmp_path_factory.mktemp("mnist")
    g = np.random.default_rng(0)
    labels = np.arange(48, dtype=np.uint8) % 10
    images = g.integers(0, 40, size=(48, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 4 + 2 * k:7 + 2 * k, 6:22] = 255
    for name, arr, magic in [("t10k-images-idx3-ubyte.gz", images, 2051), ("t10k-labels-idx1-ubyte.gz", labels, 2049)]:
        header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(root / name, "wb") as f:
            f.write(header + arr.tobytes())
    return root


def distill_args(base, root, out_dir, steps, *extra):
    return train_refiner.parse_args([
        "--base", str(base), "--data-root", str(root), "--split", "test", "--holdout", "16", "--steps", str(steps),
        "--batch-size", "16", "--lr", "3e-3", "--warmup", "2", "--ema-decay", "0.9", "--out-dir", str(out_dir),
        "--ckpt-every", "0", "--log-every", "5", "--eval-batch", "16", "--threads", "1", "--no-progress", *extra])


# ---------------------------------------------------------------- the module


def test_fresh_refiner_outputs_exactly_zero():
    refiner = VelocityRefiner(RefinerConfig())
    x, t, u, y = inputs()
    assert torch.equal(refiner(x, t, u, y), torch.zeros_like(x))
    for s in (1.0, 3.0):
        assert torch.equal(refiner.as_sampler_refiner()(x=x, t=t, u=u, y=y, cfg_scale=s), torch.zeros_like(x))


def test_size_is_about_five_percent_of_the_shipped_base():
    base = build_dit("DiT-MNIST-S")
    config = RefinerConfig.for_base(base.config)
    ratio = count_params(VelocityRefiner(config)) / count_params(base)
    assert 0.04 < ratio < 0.06, ratio
    assert (config.image_size, config.in_channels, config.num_classes, config.class_dropout_prob) == (
        28, 1, 10, base.config.class_dropout_prob)
    assert VelocityRefiner(config).x_embedder.in_channels == 2  # reads [x, u]


def test_cfg_adapter_is_one_batched_call_with_the_guidance_formula():
    refiner = randomize_(VelocityRefiner(RefinerConfig()), seed=3).eval()
    x, t, u, y = inputs()
    null = torch.full_like(y, 10)
    calls = []
    refiner.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    with torch.no_grad():
        r_c, r_u = refiner(x, t, u, y), refiner(x, t, u, null)
    calls.clear()
    fn = refiner.as_sampler_refiner()
    s = 2.5
    torch.testing.assert_close(fn(x=x, t=t, u=u, y=y, cfg_scale=s), r_u + s * (r_c - r_u), rtol=1e-5, atol=1e-6)
    assert calls == [2 * len(x)]  # one batched call on [cond; null]
    assert torch.equal(fn(x=x, t=t, u=u, y=y, cfg_scale=1.0), r_c)
    assert torch.equal(fn(x=x, t=t, u=u, y=None), r_u)  # no labels: the null class
    assert calls[1:] == [len(x), len(x)]
    assert not torch.equal(r_c, r_u)  # the labels matter


# ---------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path):
    base = tiny_base(0)
    refiner = randomize_(VelocityRefiner(RefinerConfig.for_base(base.config)), seed=4)
    path = tmp_path / "refiner.pt"
    save_refiner(path, refiner, base, meta=dict(heldout_loss=0.1, zero_refiner_loss=0.2))
    loaded = load_refiner(path, base)
    assert isinstance(loaded, SamplerRefiner) and loaded.config == refiner.config
    assert loaded.meta == dict(heldout_loss=0.1, zero_refiner_loss=0.2)
    assert not loaded.module.training and not any(p.requires_grad for p in loaded.module.parameters())
    x, t, u, y = inputs()
    for s in (1.0, 2.0):
        assert torch.equal(loaded(x=x, t=t, u=u, y=y, cfg_scale=s), refiner.as_sampler_refiner()(x=x, t=t, u=u, y=y, cfg_scale=s))


def test_base_exported_in_float16_keeps_its_fingerprint(tmp_path):
    base = tiny_base(0)
    save_checkpoint(tmp_path / "half.pt", ema={k: v.half() for k, v in base.state_dict().items()}, config=base.config)
    half, _, _ = load_model(tmp_path / "half.pt")
    assert base_fingerprint(half) == base_fingerprint(base)
    save_refiner(tmp_path / "r.pt", VelocityRefiner(RefinerConfig()), base)
    load_refiner(tmp_path / "r.pt", half)  # no error


def test_mismatched_base_model_is_refused(tmp_path):
    base = tiny_base(0)
    path = tmp_path / "refiner.pt"
    save_refiner(path, VelocityRefiner(RefinerConfig.for_base(base.config)), base)
    with pytest.raises(ValueError, match="other base weights"):
        load_refiner(path, tiny_base(1))  # same config, other weights
    with pytest.raises(ValueError, match="another config"):
        load_refiner(path, build_dit("DiT-MNIST-S"))


def test_missing_or_corrupt_file_is_refused(tmp_path, base_path):
    base, _, _ = load_model(base_path)
    with pytest.raises(ValueError, match="not found"):
        load_refiner(tmp_path / "nope.pt", base)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_refiner(tmp_path / "garbage.pt", base)
    good = tmp_path / "good.pt"
    save_refiner(good, VelocityRefiner(RefinerConfig()), base)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_refiner(tmp_path / "cut.pt", base)
    with pytest.raises(ValueError, match="missing keys"):
        load_refiner(base_path, base)  # a DiT checkpoint, not a refiner


def test_parse_turbo():
    assert parse_turbo("H1P5R3") == (1, 5, 3)
    assert parse_turbo("H2P0R10") == (2, 0, 10)
    assert parse_turbo("h1p5") == (1, 5, 0)
    assert parse_turbo("H1R4") == (1, 0, 4)
    assert parse_turbo(" H3 ") == (3, 0, 0)
    for bad in ["", "H", "P5R3", "R3", "H1R3P5", "H1.5P2", "H-1P2", "H1P5R3x", "Heun", "H1 P5", "1P5R3"]:
        with pytest.raises(ValueError, match="FlowTurbo config"):
            parse_turbo(bad)
    with pytest.raises(ValueError):
        parse_turbo(153)


# ---------------------------------------------------------------- distillation


def test_distillation_beats_the_zero_refiner(base_path, digits_root, tmp_path):
    out = train_refiner.main(distill_args(base_path, digits_root, tmp_path / "run", 50,
                                          "--export", str(tmp_path / "ref.pt")))
    assert out["step"] == 50 and np.isfinite(out["loss"])
    assert out["zero_loss"] > 0
    assert out["heldout_loss"] < 0.85 * out["zero_loss"], out  # about 0.7x after 50 steps
    base, _, _ = load_model(base_path)
    loaded = load_refiner(tmp_path / "ref.pt", base)
    assert loaded.meta["heldout_loss"] == out["heldout_loss"] and loaded.meta["zero_refiner_loss"] == out["zero_loss"]
    assert loaded.meta["step"] == 50 and loaded.meta["params"] == count_params(loaded.module)


def test_resume_equals_uninterrupted(base_path, digits_root, tmp_path):
    straight = train_refiner.main(distill_args(base_path, digits_root, tmp_path / "a", 6))
    train_refiner.main(distill_args(base_path, digits_root, tmp_path / "b", 3))  # 2 batches per epoch: resume mid-epoch
    resumed = train_refiner.main(distill_args(base_path, digits_root, tmp_path / "b", 6, "--resume"))
    assert resumed["step"] == 6
    for key in ("refiner", "ema"):
        a, b = straight[key].state_dict(), resumed[key].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), key
    assert resumed["heldout_loss"] == straight["heldout_loss"]


def test_resume_against_another_base_is_refused(base_path, digits_root, tmp_path):
    train_refiner.main(distill_args(base_path, digits_root, tmp_path / "a", 2))
    other = tmp_path / "other.pt"
    model = tiny_base(5)
    save_checkpoint(other, ema=model.state_dict(), config=model.config)
    with pytest.raises(ValueError, match="another base model"):
        train_refiner.main(distill_args(other, digits_root, tmp_path / "a", 4, "--resume"))


# ---------------------------------------------------------------- in the sampler


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_flowturbo_with_a_loaded_refiner(tmp_path, base_path, cfg_scale):
    base, _, _ = load_model(base_path)
    path = tmp_path / "refiner.pt"
    save_refiner(path, randomize_(VelocityRefiner(RefinerConfig.for_base(base.config)), seed=2), base)
    refiner = load_refiner(path, base)
    forwards = []
    refiner.module.register_forward_hook(lambda m, a, o: forwards.append(a[0].shape[0]))
    model, counted_refiner = Counted(base.forward_with_cfg), Counted(refiner)
    x0 = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    turbo = FlowTurboSampler(*parse_turbo("H1P2R2"), refiner=counted_refiner)
    res = turbo.sample(model, x0, y=y, cfg_scale=cfg_scale)
    assert res.nfe == model.calls == 2 * 1 + 2 == 4
    assert res.info["refiner_calls"] == counted_refiner.calls == 4
    assert forwards == [4 if cfg_scale == 1.0 else 8] * 4  # one (batched) refiner forward per call
    assert res.x.shape == x0.shape and torch.isfinite(res.x).all()
    zero = FlowTurboSampler(1, 2, 2, refiner=VelocityRefiner(RefinerConfig()).as_sampler_refiner())
    assert not torch.equal(res.x, zero.sample(base.forward_with_cfg, x0, y=y, cfg_scale=cfg_scale).x)
