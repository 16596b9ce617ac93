"""DiT (Peebles & Xie, 2023) predicting a rectified-flow velocity.

Time convention (used everywhere in this project): t in [0, 1], t = 0 is noise,
t = 1 is data,

    x_t = (1 - t) * noise + t * data,        v(x_t, t, y) ~= data - noise.

Images are normalised to [-1, 1] with shape (N, C, H, W).

The file reads top to bottom: helpers, embedders, block, final layer, model,
then the registry of named sizes.
"""

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DiTConfig", "DiT", "DIT_CONFIGS", "build_dit"]


@dataclass
class DiTConfig:
    image_size: int = 28
    in_channels: int = 1
    patch_size: int = 4
    hidden_size: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    class_dropout_prob: float = 0.1
    learn_sigma: bool = False  # DiT parity: if True the net outputs 2C channels, the first C are the velocity


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x * (1 + scale) + shift, with (N, T, D) x and (N, D) shift/scale."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def get_2d_sincos_pos_embed(dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos positional embedding (MAE/DiT), shape (grid_size**2, dim).

    Half of the channels encode the row, half the column, each with the 1-D
    embedding [sin(pos * w_k), cos(pos * w_k)], w_k = 10000^(-k / (dim/4)).
    """
    assert dim % 4 == 0, f"hidden_size must be divisible by 4 for 2-D sin-cos, got {dim}"
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))  # (D/4,)
    grid_h, grid_w = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")

    def embed_1d(pos):  # (T,) -> (T, D/2)
        out = np.einsum("t,k->tk", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([embed_1d(grid_w), embed_1d(grid_h)], axis=1)  # (T, D)


class TimestepEmbedder(nn.Module):
    """Embeds scalar times t in [0, 1] into (N, D) vectors: sinusoid of 1000 * t, then an MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, time_scale: float = 1000.0):
        super().__init__()
        self.frequency_size = frequency_size
        self.time_scale = time_scale
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """[cos(t * f_k), sin(t * f_k)] with f_k = max_period^(-k / (dim/2)); (N,) -> (N, dim)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]  # (N, dim/2)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t * self.time_scale, self.frequency_size)  # (N, F)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (N, D)


class LabelEmbedder(nn.Module):
    """Class labels -> (N, D). Index `num_classes` is the null (unconditional) class.

    In training, each label is replaced by the null class with probability
    `dropout_prob` (classifier-free guidance). Pass `force_drop_ids` (bool or
    0/1 tensor of shape (N,)) to choose the dropped labels yourself, e.g. from a
    seeded generator; otherwise the global RNG is used.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids.to(device=labels.device, dtype=torch.bool)
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (self.training and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)  # (N, D)


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv and scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        assert dim % num_heads == 0, f"hidden_size {dim} not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, T, D = x.shape
        qkv = self.qkv(x).reshape(N, T, 3, self.num_heads, D // self.num_heads)  # (N, T, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (N, h, T, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, h, T, d)
        return self.proj(x.transpose(1, 2).reshape(N, T, D))  # (N, T, D)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning: c -> (shift, scale, gate) x 2."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        hidden_mlp = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_mlp), nn.GELU(approximate="tanh"), nn.Linear(hidden_mlp, hidden_size)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (N, D)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (N, T, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (N, T, D)
        return x


class FinalLayer(nn.Module):
    """adaLN then a linear map from tokens to patches: (N, T, D) -> (N, T, p*p*C_out)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (N, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C_out)


def initialize_dit_weights(model: nn.Module) -> None:
    """Xavier linears, N(0, 0.02) embeddings, and adaLN-Zero: every modulation and the output
    projection start at zero, so the initial network is exactly v = 0. For any DiT-shaped model
    (``x_embedder``, ``t_embedder``, ``y_embedder``, ``blocks`` with ``adaLN_modulation``, ``final_layer``)."""

    def _basic_init(module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    model.apply(_basic_init)
    w = model.x_embedder.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.bias)
    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    for block in model.blocks:
        nn.init.zeros_(block.adaLN_modulation[-1].weight)
        nn.init.zeros_(block.adaLN_modulation[-1].bias)
    nn.init.zeros_(model.final_layer.adaLN_modulation[-1].weight)
    nn.init.zeros_(model.final_layer.adaLN_modulation[-1].bias)
    nn.init.zeros_(model.final_layer.linear.weight)
    nn.init.zeros_(model.final_layer.linear.bias)


class DiT(nn.Module):
    """Class-conditional DiT velocity field v(x_t, t, y) for rectified flow.

    Time convention: t in [0, 1], t = 0 noise, t = 1 data,
    x_t = (1 - t) * noise + t * data, target velocity = data - noise.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        c = config
        assert c.image_size % c.patch_size == 0, (
            f"image_size {c.image_size} must be divisible by patch_size {c.patch_size}"
        )
        self.config = config
        self.in_channels = c.in_channels
        self.out_channels = 2 * c.in_channels if c.learn_sigma else c.in_channels
        self.patch_size = c.patch_size
        self.grid_size = c.image_size // c.patch_size
        self.num_classes = c.num_classes

        self.x_embedder = nn.Conv2d(c.in_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout_prob)
        pos = torch.from_numpy(get_2d_sincos_pos_embed(c.hidden_size, self.grid_size)).float()
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # (1, T, D), fixed
        self.blocks = nn.ModuleList([DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """Xavier linears, N(0, 0.02) embeddings, and adaLN-Zero (``initialize_dit_weights``)."""
        initialize_dit_weights(self)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W) with T = (H/p) * (W/p)."""
        N, p, g, C = x.shape[0], self.patch_size, self.grid_size, self.out_channels
        x = x.reshape(N, g, g, p, p, C)  # (N, h, w, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, h, p, w, p)
        return x.reshape(N, C, g * p, g * p)  # (N, C, H, W)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Velocity at (x_t, t) for labels y.

        Args:
            x: (N, C, H, W) noisy images x_t.
            t: (N,) times in [0, 1] (0 = noise, 1 = data). A scalar/0-d t is broadcast.
            y: (N,) int64 labels in [0, num_classes]; num_classes is the null class.
            force_drop_ids: optional (N,) mask of labels to replace by the null class.

        Returns:
            (N, C_out, H, W) velocity; C_out = C, or 2C with learn_sigma (first C = velocity).
        """
        assert x.ndim == 4 and x.shape[1] == self.in_channels, f"expected (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        assert t.shape == (x.shape[0],), f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}"
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, force_drop_ids)  # (N, D)
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p*p*C_out)
        return self.unpatchify(x)  # (N, C_out, H, W)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float = 1.0
    ) -> torch.Tensor:
        """Classifier-free guided velocity  v = v_u + s * (v_c - v_u).

        With s == 1 this is a single conditional forward. Otherwise one batched
        forward on [x; x] with labels [y; null] (2N rows). Callable by keyword,
        as samplers do: `velocity(x=x, t=t, y=y, cfg_scale=s)`.

        Args:
            x: (N, C, H, W); t: (N,) in [0, 1] (0 noise, 1 data); y: (N,) labels.
        Returns:
            (N, C, H, W) guided velocity (only the velocity channels when learn_sigma).
        """
        C = self.in_channels
        if cfg_scale == 1.0:
            return self.forward(x, t, y)[:, :C]  # (N, C, H, W)
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        null = torch.full_like(y, self.num_classes)  # (N,)
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))[:, :C]  # (2N, C, H, W)
        v_cond, v_uncond = out.chunk(2, dim=0)  # 2 x (N, C, H, W)
        return v_uncond + cfg_scale * (v_cond - v_uncond)  # (N, C, H, W)


DIT_CONFIGS = {
    # ~0.1M params: CPU smoke tests and quick MNIST runs (49 tokens).
    "DiT-MNIST-tiny": DiTConfig(image_size=28, in_channels=1, patch_size=4, hidden_size=64, depth=2,
                                num_heads=4, mlp_ratio=4.0, num_classes=10),
    # The shipped MNIST model (checkpoints/dit_mnist.pt): trains on 2 CPU cores in ~35 min.
    "DiT-MNIST-S": DiTConfig(image_size=28, in_channels=1, patch_size=4, hidden_size=128, depth=4,
                             num_heads=4, mlp_ratio=4.0, num_classes=10),
    # DiT-S/2 on CIFAR-10 32x32 (256 tokens).
    "DiT-CIFAR-S": DiTConfig(image_size=32, in_channels=3, patch_size=2, hidden_size=384, depth=12,
                             num_heads=6, mlp_ratio=4.0, num_classes=10),
    # DiT-B/4 on downsampled ImageNet 64x64 (256 tokens).
    "DiT-IN64-B": DiTConfig(image_size=64, in_channels=3, patch_size=4, hidden_size=768, depth=12,
                            num_heads=12, mlp_ratio=4.0, num_classes=1000),
}


def build_dit(name: str, **overrides) -> DiT:
    """Build a DiT from a registry name, e.g. build_dit("DiT-MNIST-tiny", num_classes=5)."""
    if name not in DIT_CONFIGS:
        raise KeyError(f"unknown DiT config {name!r}; choose from {sorted(DIT_CONFIGS)}")
    return DiT(replace(DIT_CONFIGS[name], **overrides))
