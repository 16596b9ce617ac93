"""The video DiT: shapes, v = 0 at initialisation, temporal attention that mixes frames (and spatial
attention that does not), guidance, a clear error for clips it was not built for, and a few
rectified-flow steps that lower the loss on a fixed batch of Moving-MNIST clips."""
import pytest
import torch

import fastflow as ff
from models.data import MovingMNIST
from models.video_dit import build_video_dit
from problems import fake_digits


def clips(n, seed=0):
    data = MovingMNIST(*fake_digits(20), clips=n, seed=seed)
    xs, ys = zip(*(data[i] for i in range(n)))
    return torch.stack(xs), torch.tensor(ys)


def perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_the_output_has_the_clips_shape_and_starts_at_zero():
    model = build_video_dit("VideoDiT-MM-tiny")
    x, y = clips(3)
    v = model(x, torch.full((3,), 0.5), y)
    assert v.shape == x.shape == (3, 8, 1, 32, 32) and torch.equal(v, torch.zeros_like(v))  # adaLN-Zero


def test_frames_interact_only_through_temporal_attention():
    model = perturbed(build_video_dit("VideoDiT-MM-tiny")).eval()
    x, y = clips(2)
    t = torch.full((2,), 0.4)
    base = model(x, t, y)
    x2 = x.clone()
    x2[:, 0] += 1.0  # change frame 0 only
    assert not torch.allclose(model(x2, t, y)[:, 5], base[:, 5])  # a later frame sees it
    for block in model.blocks:  # without temporal attention the frames are independent
        block.temporal.proj.weight.data.zero_()
        block.temporal.proj.bias.data.zero_()
    base = model(x, t, y)
    torch.testing.assert_close(model(x2, t, y)[:, 1:], base[:, 1:])


def test_guidance_and_samplers_work_on_clips():
    model = perturbed(build_video_dit("VideoDiT-MM-tiny")).eval()
    x, y = clips(2)
    t = torch.full((2,), 0.3)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_with_cfg(x, t, y, 1.0), model(x, t, y))
        guided = model.forward_with_cfg(x, t, y, 2.0)
        v_c, v_u = model(x, t, y), model(x, t, torch.full_like(y, 10))
        torch.testing.assert_close(guided, v_u + 2.0 * (v_c - v_u), rtol=1e-5, atol=1e-5)
        s = ff.FastFlowSampler(12, calls=7)
        s.calibrate(model.forward_with_cfg, torch.randn(2, 8, 1, 32, 32), y=y)
        assert s.sample(model.forward_with_cfg, torch.randn(2, 8, 1, 32, 32), y=y).nfe == 7


def test_clips_it_was_not_built_for_are_refused():
    model = build_video_dit("VideoDiT-MM-tiny")
    with pytest.raises(ValueError, match=r"takes clips of 8 frames of \(1, 32, 32\), got \(4, 1, 32, 32\)"):
        model(torch.zeros(1, 4, 1, 32, 32), torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_a_few_rectified_flow_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_video_dit("VideoDiT-MM-tiny")
    x1, y = clips(8)
    g = torch.Generator().manual_seed(1)
    noise, t = torch.randn(x1.shape, generator=g), torch.rand(8, generator=g)
    xt = (1 - t)[:, None, None, None, None] * noise + t[:, None, None, None, None] * x1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (model(xt, t, y) - (x1 - noise)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
