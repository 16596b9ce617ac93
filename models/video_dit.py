"""A video DiT predicting a rectified-flow velocity for clips (N, F, C, H, W).

Time convention (as everywhere in this project): t in [0, 1], t = 0 is noise, t = 1 is data,
x_t = (1 - t) * noise + t * data, v(x_t, t, y) ~= data - noise. Clips are in [-1, 1].

Space-time patches: every frame is cut into p x p patches (one token each, F * (H/p) * (W/p)
tokens); positions are the image DiT's fixed 2-D sin-cos embedding plus a 1-D sin-cos embedding of
the frame index. Each block attends within a frame (spatial), then across frames at each position
(temporal), then applies its MLP, all three adaLN-Zero-conditioned on t and the class, so the
initial network is exactly v = 0. The embedders, attention and final layer are models/dit.py's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn

from models.dit import (Attention, FinalLayer, LabelEmbedder, TimestepEmbedder, get_2d_sincos_pos_embed,
                        initialize_dit_weights, modulate)

__all__ = ["VideoDiTConfig", "VideoDiT", "VIDEO_DIT_CONFIGS", "build_video_dit"]


@dataclass
class VideoDiTConfig:
    frames: int = 8
    image_size: int = 32
    in_channels: int = 1
    patch_size: int = 4
    hidden_size: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    class_dropout_prob: float = 0.1


def get_1d_sincos_embed(dim: int, length: int) -> np.ndarray:
    """(length, dim) embedding of positions 0..length-1: [sin(pos w_k), cos(pos w_k)], w_k = 10000^(-2k/dim)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("t,k->tk", np.arange(length, dtype=np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


class FactorisedBlock(nn.Module):
    """Spatial attention within each frame, temporal attention across frames, then an MLP; each
    adaLN-Zero-modulated by the condition c: c -> (shift, scale, gate) x 3."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        norm = lambda: nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)  # noqa: E731
        self.norm_s, self.norm_t, self.norm_m = norm(), norm(), norm()
        self.spatial, self.temporal = Attention(hidden_size, num_heads), Attention(hidden_size, num_heads)
        hidden_mlp = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_mlp), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden_mlp, hidden_size))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 9 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (N, F, S, D) tokens (S per frame), c (N, D)."""
        N, Fr, S, D = x.shape
        m = self.adaLN_modulation(c).chunk(9, dim=1)  # 9 x (N, D)
        h = modulate(self.norm_s(x).reshape(N, Fr * S, D), m[0], m[1]).reshape(N * Fr, S, D)
        x = x + m[2][:, None, None] * self.spatial(h).reshape(N, Fr, S, D)               # within a frame
        h = modulate(self.norm_t(x).reshape(N, Fr * S, D), m[3], m[4]).reshape(N, Fr, S, D)
        h = self.temporal(h.transpose(1, 2).reshape(N * S, Fr, D)).reshape(N, S, Fr, D).transpose(1, 2)
        x = x + m[5][:, None, None] * h                                                   # across frames
        h = modulate(self.norm_m(x).reshape(N, Fr * S, D), m[6], m[7]).reshape(N, Fr, S, D)
        return x + m[8][:, None, None] * self.mlp(h)


class VideoDiT(nn.Module):
    """Class-conditional video velocity field v(x_t, t, y) for clips x of shape (N, F, C, H, W).

    Time convention: t in [0, 1], t = 0 noise, t = 1 data; target velocity = data - noise.
    """

    def __init__(self, config: VideoDiTConfig):
        super().__init__()
        c = config
        if c.image_size % c.patch_size or c.hidden_size % 4:
            raise ValueError(f"image_size {c.image_size} must be divisible by patch_size {c.patch_size} and "
                             f"hidden_size {c.hidden_size} by 4")
        self.config, self.frames, self.in_channels = config, c.frames, c.in_channels
        self.out_channels, self.patch_size, self.num_classes = c.in_channels, c.patch_size, c.num_classes
        self.grid_size = c.image_size // c.patch_size
        self.x_embedder = nn.Conv2d(c.in_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout_prob)
        space = torch.from_numpy(get_2d_sincos_pos_embed(c.hidden_size, self.grid_size)).float()  # (S, D)
        time = torch.from_numpy(get_1d_sincos_embed(c.hidden_size, c.frames)).float()             # (F, D)
        self.register_buffer("pos_embed", (time[:, None] + space[None])[None], persistent=False)  # (1, F, S, D)
        self.blocks = nn.ModuleList([FactorisedBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """Xavier linears, N(0, 0.02) embeddings, and adaLN-Zero, so the initial network is exactly
        v = 0 (``models.dit.initialize_dit_weights``)."""
        initialize_dit_weights(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity at (x_t, t) for labels y.

        Args:
            x: (N, F, C, H, W) noisy clips; t: (N,) times in [0, 1] (a 0-d t is broadcast);
            y: (N,) labels in [0, num_classes] (num_classes is the null class).

        Raises:
            ValueError: for clips of another frame count, channels or size than the model's.
        """
        N, Fr, C, H, W = x.shape
        if (Fr, C, H, W) != (self.frames, self.in_channels, self.config.image_size, self.config.image_size):
            raise ValueError(f"this video model takes clips of {self.frames} frames of ({self.in_channels}, "
                             f"{self.config.image_size}, {self.config.image_size}), got {tuple(x.shape[1:])}")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(N) if t.ndim == 0 else t
        tokens = self.x_embedder(x.reshape(N * Fr, C, H, W)).flatten(2).transpose(1, 2)  # (N F, S, D)
        h = tokens.reshape(N, Fr, -1, tokens.shape[-1]) + self.pos_embed                  # (N, F, S, D)
        c = self.t_embedder(t) + self.y_embedder(y, force_drop_ids)                        # (N, D)
        for block in self.blocks:
            h = block(h, c)
        S, D = h.shape[2], h.shape[3]
        out = self.final_layer(h.reshape(N, Fr * S, D), c)                                 # (N, F S, p p C)
        p, g = self.patch_size, self.grid_size
        out = out.reshape(N, Fr, g, g, p, p, C)
        return torch.einsum("nfhwpqc->nfchpwq", out).reshape(N, Fr, C, g * p, g * p)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float = 1.0):
        """Classifier-free guided velocity v_u + s (v_c - v_u) (one batched call of 2N clips when s != 1)."""
        if cfg_scale == 1.0:
            return self.forward(x, t, y)
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        null = torch.full_like(y, self.num_classes)
        v_cond, v_uncond = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        return v_uncond + cfg_scale * (v_cond - v_uncond)


VIDEO_DIT_CONFIGS = {
    # CPU: 8 frames of 32 x 32, 64 tokens per frame.
    "VideoDiT-MM-S": VideoDiTConfig(frames=8, image_size=32, patch_size=4, hidden_size=96, depth=4, num_heads=4),
    "VideoDiT-MM-tiny": VideoDiTConfig(frames=8, image_size=32, patch_size=8, hidden_size=32, depth=1, num_heads=2),
    # GPU: 16 frames of 64 x 64, two digits.
    "VideoDiT-MM-B": VideoDiTConfig(frames=16, image_size=64, patch_size=4, hidden_size=384, depth=8, num_heads=6),
}


def build_video_dit(name: str, **overrides) -> VideoDiT:
    """Build a video DiT from a registry name, e.g. build_video_dit("VideoDiT-MM-tiny").

    Raises:
        KeyError: for an unknown name.
    """
    if name not in VIDEO_DIT_CONFIGS:
        raise KeyError(f"unknown video DiT config {name!r}; choose from {sorted(VIDEO_DIT_CONFIGS)}")
    return VideoDiT(replace(VIDEO_DIT_CONFIGS[name], **overrides))
