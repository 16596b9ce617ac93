"""DiT: shapes, adaLN-Zero init, classifier-free guidance, learning, checkpoints."""

import os
from dataclasses import asdict

import pytest
import torch

from models import DIT_CONFIGS, CheckpointError, DiT, DiTConfig, build_dit, load_checkpoint, load_model, save_checkpoint
from models.checkpoint import FULL_KEYS

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = DiTConfig(image_size=8, in_channels=2, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=3)


def randomize_(model: DiT, seed: int = 0) -> DiT:
    """Give the zero-initialised adaLN/final layers random weights so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def batch(n=4, config=TINY, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, config.in_channels, config.image_size, config.image_size, generator=g)
    t = torch.rand(n, generator=g)
    y = torch.randint(0, config.num_classes, (n,), generator=g)
    return x, t, y


@pytest.mark.parametrize("name", ["DiT-MNIST-tiny"])
def test_registry_output_shape(name):
    model = build_dit(name)
    c = model.config
    x = torch.randn(3, c.in_channels, c.image_size, c.image_size)
    out = model(x, torch.rand(3), torch.tensor([0, 1, c.num_classes]))
    assert out.shape == x.shape


def test_registry_configs_are_consistent():
    for name, c in DIT_CONFIGS.items():
        assert c.image_size % c.patch_size == 0 and c.hidden_size % c.num_heads == 0, name
    assert {"DiT-MNIST-tiny", "DiT-CIFAR-S", "DiT-IN64-B"} <= set(DIT_CONFIGS)


def test_learn_sigma_doubles_channels_but_cfg_returns_velocity():
    c = DiTConfig(**{**asdict(TINY), "learn_sigma": True})
    model = randomize_(DiT(c)).eval()
    x, t, y = batch(config=c)
    assert model(x, t, y).shape == (4, 2 * c.in_channels, 8, 8)
    assert model.forward_with_cfg(x=x, t=t, y=y, cfg_scale=2.0).shape == x.shape


def test_adaln_zero_initial_output_is_exactly_zero():
    model = DiT(TINY)
    x, t, y = batch()
    assert torch.equal(model(x, t, y), torch.zeros_like(x))


def test_scalar_time_is_broadcast():
    model = randomize_(DiT(TINY)).eval()
    x, _, y = batch()
    torch.testing.assert_close(model(x, torch.tensor(0.3), y), model(x, torch.full((4,), 0.3), y))


def test_label_dropout_uses_null_class():
    model = randomize_(DiT(TINY)).eval()
    x, t, y = batch()
    null = torch.full_like(y, TINY.num_classes)
    dropped = model(x, t, y, force_drop_ids=torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(dropped, model(x, t, null))
    kept = model(x, t, y, force_drop_ids=torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(kept, model(x, t, y))


def test_forward_with_cfg_scale_one_equals_forward():
    model = randomize_(DiT(TINY)).eval()
    x, t, y = batch()
    torch.testing.assert_close(model.forward_with_cfg(x=x, t=t, y=y, cfg_scale=1.0), model(x, t, y))


@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_forward_with_cfg_formula(scale):
    model = randomize_(DiT(TINY)).eval()
    x, t, y = batch()
    v_c = model(x, t, y)
    v_u = model(x, t, torch.full_like(y, TINY.num_classes))
    expected = v_u + scale * (v_c - v_u)
    torch.testing.assert_close(model.forward_with_cfg(x=x, t=t, y=y, cfg_scale=scale), expected,
                               atol=1e-5, rtol=1e-5)


def test_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    model = DiT(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    data = torch.rand(16, 2, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(16, 2, 8, 8, generator=g)
    t = torch.rand(16, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    x_t = (1 - t.view(-1, 1, 1, 1)) * noise + t.view(-1, 1, 1, 1) * data
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(x_t, t, y, force_drop_ids=torch.zeros(16)), data - noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------- checkpoints


def full_payload(model):
    opt = torch.optim.AdamW(model.parameters())
    return dict(model=model.state_dict(), ema=model.state_dict(), optimizer=opt.state_dict(), step=7,
                config=model.config, args={"lr": 1e-3}, data={"name": "fake", "image_size": 8})


def test_checkpoint_round_trip(tmp_path):
    model = randomize_(DiT(TINY)).eval()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, **full_payload(model))
    payload = load_checkpoint(path, required=FULL_KEYS, expected_config=TINY)
    assert payload["step"] == 7 and payload["config"] == asdict(TINY)
    loaded, config, meta = load_model(path)
    assert config == TINY and not loaded.training and meta["step"] == 7
    x, t, y = batch()
    assert torch.equal(loaded(x, t, y), model(x, t, y))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_slim_fp16_checkpoint_loads(tmp_path):
    model = randomize_(DiT(TINY)).eval()
    path = tmp_path / "slim.pt"
    save_checkpoint(path, ema={k: v.half() for k, v in model.state_dict().items()}, config=asdict(TINY))
    loaded, config, meta = load_model(path)
    assert meta == {} and next(loaded.parameters()).dtype == torch.float32
    x, t, y = batch()
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y), atol=2e-2, rtol=2e-2)
    with pytest.raises(CheckpointError, match="missing keys \\['model'\\]"):
        load_model(path, ema=False)


def test_checkpoint_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_and_garbage_checkpoints_raise_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, **full_payload(DiT(TINY)))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\x00\x01" * 10)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
            load_model(path)
        assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_checkpoint_missing_keys_and_config_mismatch(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, ema=DiT(TINY).state_dict(), config=TINY)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(path, required=FULL_KEYS)
    other = DiTConfig(**{**asdict(TINY), "depth": 3})
    with pytest.raises(CheckpointError, match="config mismatch.*depth"):
        load_checkpoint(path, expected_config=other)
    save_checkpoint(path, ema=DiT(other).state_dict(), config=TINY)  # weights that do not fit the config
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)


def test_atomic_write_keeps_old_file_when_save_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, ema=DiT(TINY).state_dict(), config=TINY, step=1)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, ema=DiT(TINY).state_dict(), config=TINY, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
