"""Moving-MNIST clips synthesised from digits: a pure function of (seed, index), digits that move at
constant velocity between bounces, and rendered frames whose centroid follows the track."""
import numpy as np
import pytest
import torch

from models.data import MovingMNIST, bouncing_track
from problems import fake_digits


def blob_digits(n):
    """Solid squares, so a frame's centroid is exactly the sprite's centre."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 4:24, 4:24] = 255
    return images, (np.arange(n) % 10).astype(np.uint8)


def test_a_clip_is_a_pure_function_of_seed_and_index():
    data = MovingMNIST(*fake_digits(20), clips=50, seed=3)
    a, la = data.clip(7)
    b, lb = MovingMNIST(*fake_digits(20), clips=50, seed=3).clip(7)
    assert torch.equal(a, b) and la == lb and a.shape == (8, 1, 32, 32) and a.dtype == torch.uint8
    assert not torch.equal(a, data.clip(8)[0]) and not torch.equal(a, MovingMNIST(*fake_digits(20), 50, seed=4).clip(7)[0])
    x, y = data[7]
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(((x + 1) * 127.5).round().to(torch.uint8), a)


def test_the_track_moves_at_constant_velocity_and_reflects_off_the_walls():
    """Bouncing at constant speed is straight motion seen through the folding of the line into the room:
    position(f) = fold(p0 + v f), fold(u) = room - |(u mod 2 room) - room|."""
    room = 16.0
    for seed in range(50):
        track = bouncing_track(40, room, np.random.default_rng(seed))
        again = np.random.default_rng(seed)  # the same draws: start, direction, speed
        p0, angle, speed = again.uniform(0, room, size=2), again.uniform(0, 2 * np.pi), again.uniform(1.5, 3.0)
        v = speed * np.array([np.sin(angle), np.cos(angle)])
        u = p0 + v * np.arange(40)[:, None]
        fold = room - np.abs(np.mod(u, 2 * room) - room)
        assert np.allclose(track, fold, atol=1e-9) and track.min() >= 0 and track.max() <= room
        assert np.allclose(np.linalg.norm(np.diff(u, axis=0), axis=1), speed)  # constant speed between bounces


def test_the_rendered_centroid_follows_the_track():
    data = MovingMNIST(*blob_digits(5), clips=10, frames=12, size=32, digit_size=16, seed=1)
    for i in range(10):
        clip, _ = data.clip(i)
        track = data.track(i)[0]
        w = clip[:, 0].double()
        rows, cols = torch.arange(32.0, dtype=torch.float64), torch.arange(32.0, dtype=torch.float64)
        cy = (w.sum(2) * rows).sum(1) / w.sum((1, 2))
        cx = (w.sum(1) * cols).sum(1) / w.sum((1, 2))
        centre = np.rint(track) + 7.5  # the sprite's centre, at the rounded position
        assert np.allclose(cy.numpy(), centre[:, 0], atol=0.3) and np.allclose(cx.numpy(), centre[:, 1], atol=0.3)


def test_the_gpu_configuration_and_bad_settings():
    data = MovingMNIST(*fake_digits(20), clips=4, frames=16, size=64, digit_size=28, digits=2)
    clip, label = data.clip(0)
    assert clip.shape == (16, 1, 64, 64) and data.track(0).shape == (2, 16, 2) and 0 <= label <= 9
    with pytest.raises(ValueError, match="does not fit"):
        MovingMNIST(*fake_digits(4), clips=2, size=16, digit_size=16)
    with pytest.raises(ValueError, match="uint8 images"):
        MovingMNIST(np.zeros((4, 28, 28), dtype=np.float32), np.zeros(4), clips=2)
