"""models/video_eval.py: centroids, the bouncing-motion residual, crops for the digit classifier and
per-frame PSNR, against exact answers."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.data import MovingMNIST, bouncing_track
from models.video_eval import (centroids, digit_room, frame_crops, motion_residual, per_frame_accuracy,
                               psnr_per_frame)

pytestmark = pytest.mark.usefixtures("one_thread")
MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


def tracks(n, frames=8, room=16.0, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor(np.stack([bouncing_track(frames, room, rng) for _ in range(n)]))


def seven():
    """A 28 x 28 '7' with its ink centred by mass, as MNIST centres its digits."""
    img = np.zeros((28, 28), np.uint8)
    img[6:9, 7:21] = 255                              # the bar
    for r in range(9, 23):                            # the stroke down to the left
        c = 20 - (r - 9) // 2
        img[r, c - 1:c + 2] = 255
    return np.roll(img, (2, -2), axis=(0, 1))         # its ink centroid from (11.25, 15.25) to (13.25, 13.25)


@pytest.mark.parametrize("frames, room", [(8, 16.0), (16, 32.0)])
def test_exact_bouncing_tracks_leave_no_residual(frames, room):
    track = tracks(300, frames, room)
    assert motion_residual(track, room).max() < 1e-9          # top-left tracks: offset c = 0
    assert motion_residual(track + 7.3, room).max() < 1e-9    # a centroid track: offset c = 7.3 fitted
    bounced = ((track[:, 1:] - track[:, :-1]).sign().diff(dim=1) != 0).any(-1).any(-1)
    assert bounced.float().mean() > 0.5                       # most of them bounce at least once


def test_the_residual_grows_with_noise_as_three_parameters_per_axis_predict():
    track = tracks(400)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(track.shape, generator=g, dtype=torch.float64)
    means = [motion_residual(track + e * noise, 16.0).mean().item() for e in (0.1, 0.3, 1.0)]
    for e, m in zip((0.1, 0.3, 1.0), means):  # about e sqrt(2 (F - 3) / F), a bit less for the bounces' freedom
        assert 0.8 * e * math.sqrt(2 * 5 / 8) < m < 1.05 * e * math.sqrt(2 * 5 / 8)
    assert means[0] < means[1] < means[2]
    jumps = motion_residual(torch.rand(200, 8, 2, dtype=torch.float64) * 16, 16.0)  # no motion at all
    assert jumps.mean() > 3


def test_centroid_of_a_blob_and_of_an_empty_frame():
    clips = -torch.ones(2, 3, 1, 12, 20)
    clips[0, 0, 0, 3:7, 10:15] = 1                            # a square: rows 3..6, cols 10..14
    clips[0, 1, 0, 5, 2] = 1                                  # one pixel, and another at half ink
    clips[0, 1, 0, 5, 8] = 0
    clips[1, 2, 0, 0, 0] = -3                                 # below -1: no ink, not negative ink
    c = centroids(clips)
    assert c.shape == (2, 3, 2) and c.dtype == torch.float64
    torch.testing.assert_close(c[0, 0], torch.tensor([4.5, 12.0], dtype=torch.float64))
    torch.testing.assert_close(c[0, 1], torch.tensor([5.0, (2 * 1 + 8 * 0.5) / 1.5], dtype=torch.float64))
    torch.testing.assert_close(c[1, 2], torch.tensor([5.5, 9.5], dtype=torch.float64))  # the canvas centre


def moving_sevens(clips=4, seed=0):
    images = np.stack([seven()] * 3)
    return MovingMNIST(images, np.array([7, 7, 7]), clips=clips, seed=seed)


def test_a_moving_mnist_clip_has_the_centroid_of_its_placed_digit_and_moves_as_its_track():
    data = moving_sevens()
    sprite = data.sprites[0].double()
    rows, cols = torch.arange(16, dtype=torch.float64), torch.arange(16, dtype=torch.float64)
    ink = torch.stack([(sprite.sum(1) * rows).sum(), (sprite.sum(0) * cols).sum()]) / sprite.sum()
    for i in range(len(data)):
        clip, _ = data[i]
        c = centroids(clip[None])[0]
        top_left = torch.tensor(np.rint(data.track(i)[0]))
        torch.testing.assert_close(c, top_left + ink, rtol=0, atol=1e-4)  # uint8 ink, drawn at whole pixels
        assert motion_residual(c, digit_room(32)) < 0.5                   # rounding to pixels only
        assert motion_residual(torch.tensor(data.track(i)[0]), digit_room(32)) < 1e-9


def test_crops_land_on_the_digit():
    data = moving_sevens()
    clips = torch.stack([data[i][0] for i in range(len(data))])             # (4, 8, 1, 32, 32)
    crops = frame_crops(clips, centroids(clips))
    assert crops.shape == (32, 1, 28, 28) and crops.min() >= -1 and crops.max() <= 1
    sprite = data.sprites[0].float()[None, None] / 127.5 - 1                # the 7 as the clip draws it, 16 px
    drawn = F.interpolate(sprite, size=(28, 28), mode="bilinear", align_corners=False)[0, 0].double()
    for crop in crops:
        r = np.corrcoef(crop[0].double().flatten(), drawn.flatten())[0, 1]
        assert r > 0.95                                                     # the 7, framed as MNIST frames it
        c = centroids(crop[None, None])[0, 0]
        assert (c - 13.5).abs().max() < 0.75                                # centred by its ink
    away = frame_crops(clips[:1], torch.full((1, 8, 2), -40.0))
    assert torch.equal(away, -torch.ones_like(away))                        # outside the frame: background


def test_per_frame_accuracy_judges_every_frame_against_its_clip_label():
    data = moving_sevens(clips=3)
    clips = torch.stack([data[i][0] for i in range(3)])
    labels = torch.tensor([7, 3, 7])

    def says_seven(x):
        assert x.shape == (24, 1, 28, 28) and set(x.unique().tolist()) <= {-1.0, 1.0}  # binarised crops
        return F.one_hot(torch.full((x.shape[0],), 7), 10).float()
    assert per_frame_accuracy(says_seven, clips, labels) == pytest.approx(2 / 3)


@pytest.mark.skipif(not os.path.isdir(MNIST), reason="needs ../shared/data/mnist")
def test_the_shipped_classifier_reads_real_moving_mnist_frames():
    from models.classifier import load_classifier
    from models.data import build_moving_mnist
    path = os.path.join(os.path.dirname(__file__), "..", "checkpoints", "mnist_classifier.pt")
    data, _ = build_moving_mnist(MNIST, train=False, download=False, clips=16)
    clips = torch.stack([data[i][0] for i in range(16)])
    labels = torch.tensor([data[i][1] for i in range(16)])
    assert per_frame_accuracy(load_classifier(path), clips, labels) > 0.9
    assert motion_residual(centroids(clips), digit_room(32)).max() < 0.5


def test_psnr_per_frame_is_the_analytic_value():
    a = torch.zeros(2, 4, 1, 8, 8)
    b = a.clone()
    for f in range(4):
        b[0, f] += 0.1 * (f + 1)                  # MSE (0.1 (f + 1))^2: PSNR 20 log10(2 / (0.1 (f + 1)))
    p = psnr_per_frame(b, a)
    assert p.shape == (2, 4)
    torch.testing.assert_close(p[0], torch.tensor([20 * math.log10(20 / (f + 1)) for f in range(4)],
                                                  dtype=torch.float64))
    assert torch.isinf(p[1]).all()                # identical frames


@pytest.mark.parametrize("call, message", [
    (lambda: centroids(torch.zeros(2, 1, 28, 28)), r"clips must be video clips \(N, F, C, H, W\), got shape "
                                                   r"\(2, 1, 28, 28\) \(a batch of images"),
    (lambda: psnr_per_frame(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28)), "a must be video clips"),
    (lambda: psnr_per_frame(torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 3, 1, 4, 4)), "must have one shape"),
    (lambda: motion_residual(torch.zeros(4, 8, 3), 16.0), r"track must be \(\.\.\., F, 2\)"),
    (lambda: motion_residual(torch.zeros(4, 2, 2), 16.0), "3 <= F <= 16"),
    (lambda: motion_residual(torch.zeros(4, 8, 2), 0.0), "room must be > 0"),
    (lambda: motion_residual(torch.zeros(4, 8, 2), 16.0, max_speed=9), r"max_speed must be in \(0, room / 2"),
    (lambda: frame_crops(torch.zeros(1, 8, 1, 32, 32), torch.zeros(1, 7, 2)), r"centres must be \(N, F, 2\)"),
    (lambda: per_frame_accuracy(lambda x: x, torch.zeros(2, 8, 1, 32, 32), torch.zeros(3)), r"labels must be \(N,\)"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
