"""train.py --dataset moving-mnist: clips from the MNIST idx files, a VideoDiT, exact resume, and the
model-kind checks of load_model."""

import numpy as np
import pytest
import torch

import train
from models import CheckpointError, load_model
from models.data import build_moving_mnist
from models.video_dit import VideoDiT
from problems import fake_digits, write_idx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def mnist_root(tmp_path):
    return write_idx(tmp_path / "mnist", "train", *fake_digits(30))


def video_args(root, out_dir, steps, *extra):
    return train.parse_args([
        "--dataset", "moving-mnist", "--data-root", str(root), "--model", "VideoDiT-MM-tiny", "--steps", str(steps),
        "--batch-size", "4", "--warmup", "1", "--out-dir", str(out_dir), "--ckpt-every", "0", "--sample-every", "0",
        "--sample-steps", "2", "--log-every", "1", "--threads", "1", "--no-progress", *extra])


def test_moving_mnist_builder_reads_the_idx_digits_and_keeps_splits_apart(mnist_root):
    data, info = build_moving_mnist(str(mnist_root), train=True, download=False, clips=12)
    assert (info.name, info.frames, info.image_size, info.num_examples) == ("moving-mnist", 8, 32, 12)
    clip, label = data[3]
    assert clip.shape == (8, 1, 32, 32) and clip.min() >= -1 and clip.max() <= 1 and 0 <= label <= 9
    images, labels = fake_digits(30)
    assert data.sprites.shape == (30, 16, 16) and np.array_equal(data.labels, labels)
    write_idx(mnist_root, "t10k", images, labels)
    test, _ = build_moving_mnist(str(mnist_root), train=False, download=False, clips=12)
    assert not torch.equal(test.clip(3)[0], data.clip(3)[0])  # seed 1 against seed 0
    big, info = build_moving_mnist(str(mnist_root), train=True, download=False, frames=16, size=64, clips=2)
    assert big.digits == 2 and big.digit_size == 32 and big[0][0].shape == (16, 1, 64, 64)


def test_video_training_resumes_to_the_same_weights_and_exports_a_video_model(mnist_root, tmp_path):
    straight = train.main(video_args(mnist_root, tmp_path / "a", 4))
    train.main(video_args(mnist_root, tmp_path / "b", 2))
    resumed = train.main(video_args(mnist_root, tmp_path / "b", 4, "--resume", "--export", str(tmp_path / "v.pt")))
    assert np.isfinite(straight["loss"]) and resumed["step"] == 4
    for name, a in straight["ema"].state_dict().items():
        torch.testing.assert_close(a, resumed["ema"].state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)
    model, config, meta = load_model(tmp_path / "v.pt")
    assert isinstance(model, VideoDiT) and config.frames == 8 and meta["data"]["frames"] == 8
    with pytest.raises(CheckpointError, match="holds a video model but this path takes image models only"):
        load_model(tmp_path / "v.pt", kind="image")
    image = train.main(train.parse_args(["--dataset", "mnist", "--data-root", str(mnist_root), "--steps", "1",
                                         "--batch-size", "4", "--out-dir", str(tmp_path / "img"), "--threads", "1",
                                         "--sample-every", "0", "--sample-steps", "2", "--no-progress",
                                         "--export", str(tmp_path / "i.pt")]))
    assert image["step"] == 1
    with pytest.raises(CheckpointError, match="holds an image model but this path takes video models only"):
        load_model(tmp_path / "i.pt", kind="video")


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "moving-mnist", "--model", "DiT-MNIST-S"], "--model DiT-MNIST-S is an image model but --dataset moving-mnist holds clips"),
    (["--dataset", "mnist", "--model", "VideoDiT-MM-S"], "--model VideoDiT-MM-S is a video model but --dataset mnist holds images"),
    (["--dataset", "moving-mnist", "--image-size", "64"], "take their frame size and count from the video model")])
def test_video_model_and_data_must_match(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_init_from_starts_both_weights_at_a_checkpoints_ema_and_refuses_another_model(mnist_root, tmp_path):
    first = train.main(video_args(mnist_root, tmp_path / "a", 3, "--export", str(tmp_path / "v.pt")))
    start = {k: v.clone() for k, v in first["ema"].state_dict().items()}
    # one step at a learning rate too small to move anything: what is left is where the run started
    warm = train.main(video_args(mnist_root, tmp_path / "b", 1, "--init-from", str(tmp_path / "v.pt"), "--lr", "1e-12"))
    cold = train.main(video_args(mnist_root, tmp_path / "c", 1, "--lr", "1e-12"))
    for name, value in start.items():
        torch.testing.assert_close(warm["model"].state_dict()[name], value, rtol=0, atol=1e-9, msg=name)
        torch.testing.assert_close(warm["ema"].state_dict()[name], value, rtol=0, atol=1e-9, msg=name)
    moved = [n for n, v in start.items() if not torch.allclose(cold["model"].state_dict()[n], v, atol=1e-6)]
    assert moved, "a run from scratch starts elsewhere than the trained weights"
    # a resumed run keeps its own weights: --init-from does not reset them
    with_init = train.main(video_args(mnist_root, tmp_path / "c", 2, "--resume", "--init-from", str(tmp_path / "v.pt")))
    train.main(video_args(mnist_root, tmp_path / "e", 1, "--lr", "1e-12"))
    without = train.main(video_args(mnist_root, tmp_path / "e", 2, "--resume"))
    assert with_init["step"] == without["step"] == 2
    for name, value in without["model"].state_dict().items():
        torch.testing.assert_close(with_init["model"].state_dict()[name], value, msg=name)
    image = tmp_path / "i.pt"
    train.main(train.parse_args(["--dataset", "mnist", "--data-root", str(mnist_root), "--steps", "1",
                                 "--batch-size", "4", "--out-dir", str(tmp_path / "img"), "--threads", "1",
                                 "--sample-every", "0", "--sample-steps", "2", "--no-progress", "--export", str(image)]))
    with pytest.raises(CheckpointError, match="config mismatch"):
        train.main(video_args(mnist_root, tmp_path / "d", 1, "--init-from", str(image)))
