"""A tiny velocity refiner for FlowTurbo's R blocks, distilled from a frozen DiT.

Time convention: t in [0, 1], t = 0 noise, t = 1 data, x_t = (1 - t) noise + t data,
velocity v(x_t, t, y) ~ data - noise. Images (N, C, H, W).

The refiner r(x, t, u, y) predicts the correction that turns a reference velocity u
(one computed a little earlier on the trajectory) into the base model's velocity here:

    v(x, t, y) ~ u + r(x, t, u, y).

It is one DiT block whose patch embedding reads [x, u] stacked on channels (2C in),
conditioned on t and the class (null class = num_classes, label dropout in training),
with adaLN-Zero so that a fresh refiner outputs exactly r = 0 (plain velocity reuse).

File layout: config, module, sampler adapter, base-model fingerprint, save/load,
``parse_turbo``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.dit import DiT, DiTBlock, DiTConfig, FinalLayer, LabelEmbedder, TimestepEmbedder, get_2d_sincos_pos_embed

__all__ = ["RefinerConfig", "VelocityRefiner", "SamplerRefiner", "base_fingerprint",
           "save_refiner", "load_refiner", "parse_turbo", "count_params", "REFINER_KEYS"]

REFINER_KEYS = ("ema", "refiner_config", "base")


@dataclass
class RefinerConfig:
    """Shape of the refiner. Geometry and classes must match the base DiT (see ``for_base``).

    The defaults (hidden 56, one block, 4 heads, MLP ratio 2, 64 time frequencies) give
    61,224 parameters: 4.8% of DiT-MNIST-S (1,275,408).
    """

    image_size: int = 28
    in_channels: int = 1  # C of x (and of u); the patch embedding reads 2C channels
    patch_size: int = 4
    hidden_size: int = 56
    depth: int = 1
    num_heads: int = 4
    mlp_ratio: float = 2.0
    frequency_size: int = 64  # sinusoid size of the time embedding (DiT uses 256)
    num_classes: int = 10
    class_dropout_prob: float = 0.1

    @classmethod
    def for_base(cls, base: DiTConfig, **overrides) -> "RefinerConfig":
        """A refiner config with the base's image size, channels, patch size, classes and label dropout."""
        geometry = dict(image_size=base.image_size, in_channels=base.in_channels, patch_size=base.patch_size,
                        num_classes=base.num_classes, class_dropout_prob=base.class_dropout_prob)
        return replace(cls(**geometry), **overrides)


def count_params(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


class VelocityRefiner(nn.Module):
    """r(x, t, u, y): correction to a reference velocity u, so that v(x, t, y) ~ u + r.

    Built from ``models.dit`` parts: a patch embedding of [x, u] (2C -> D), the DiT time
    and label embedders, ``depth`` DiTBlocks and the FinalLayer (D -> p*p*C). The adaLN
    modulations and the output projection start at zero, so a new refiner returns r = 0.
    """

    def __init__(self, config: RefinerConfig):
        super().__init__()
        c = config
        assert c.image_size % c.patch_size == 0, f"image_size {c.image_size} not divisible by patch {c.patch_size}"
        self.config = config
        self.in_channels = c.in_channels
        self.out_channels = c.in_channels
        self.patch_size = c.patch_size
        self.grid_size = c.image_size // c.patch_size
        self.num_classes = c.num_classes

        self.x_embedder = nn.Conv2d(2 * c.in_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size, frequency_size=c.frequency_size)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout_prob)
        pos = torch.from_numpy(get_2d_sincos_pos_embed(c.hidden_size, self.grid_size)).float()
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # (1, T, D), fixed
        self.blocks = nn.ModuleList([DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, self.out_channels)
        DiT.initialize_weights(self)  # DiT's init (same attribute names): adaLN-Zero, zero output -> r = 0

    unpatchify = DiT.unpatchify  # (N, T, p*p*C) -> (N, C, H, W); uses patch_size, grid_size, out_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor, y: torch.Tensor,
                force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Correction r at (x, t) for reference velocity u and labels y.

        Args:
            x: (N, C, H, W) state at time t.
            t: (N,) times in [0, 1] (0 = noise, 1 = data); a scalar is broadcast.
            u: (N, C, H, W) reference velocity (e.g. the one handed on by the previous block).
            y: (N,) int64 labels in [0, num_classes]; num_classes is the null class.
            force_drop_ids: optional (N,) mask of labels to replace by the null class. In
                train mode without it, labels drop with probability class_dropout_prob.

        Returns:
            (N, C, H, W) correction r, so that v(x, t, y) ~ u + r.
        """
        assert x.ndim == 4 and x.shape[1] == self.in_channels, f"expected x (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
        assert u.shape == x.shape, f"u must be shaped like x {tuple(x.shape)}, got {tuple(u.shape)}"
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        assert t.shape == (x.shape[0],), f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}"
        h = self.x_embedder(torch.cat([x, u], dim=1)).flatten(2).transpose(1, 2) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, force_drop_ids)  # (N, D)
        for block in self.blocks:
            h = block(h, c)  # (N, T, D)
        h = self.final_layer(h, c)  # (N, T, p*p*C)
        return self.unpatchify(h)  # (N, C, H, W)

    def as_sampler_refiner(self, meta: dict | None = None) -> "SamplerRefiner":
        """This refiner as a FlowTurboSampler ``refiner`` callable (see SamplerRefiner)."""
        return SamplerRefiner(self, meta)


class SamplerRefiner:
    """The callable FlowTurboSampler wants: ``refiner(x=x, t=t, u=u, y=y, cfg_scale=s) -> r``.

    Guidance mirrors ``DiT.forward_with_cfg``:

        s == 1 (or y is None):  r = r(x, t, u, y)               one call (y None -> null class)
        otherwise:              r = r_u + s (r_c - r_u)         one batched call on [y; null]

    with r_c = r(x, t, u, y), r_u = r(x, t, u, null). If r were exact, r_c = v_c - u and
    r_u = v_u - u, so u + r = v_u + s (v_c - v_u): the guided velocity, whatever u is.
    Other extras are ignored. Runs without autograd, in eval mode.

    Attributes:
        module: the VelocityRefiner (eval mode).
        config: its RefinerConfig.
        meta: what the file said about training (held-out losses, steps, ...), or {}.
    """

    def __init__(self, module: VelocityRefiner, meta: dict | None = None):
        self.module = module
        self.config = module.config
        self.meta = dict(meta or {})

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor, y: torch.Tensor | None = None,
                 cfg_scale: float = 1.0, **_) -> torch.Tensor:
        """(N, C, H, W) correction for x, u (N, C, H, W), t (N,), labels y (N,) or None."""
        was_training = self.module.training
        self.module.eval()
        try:
            t = torch.as_tensor(t, device=x.device)
            t = t.expand(x.shape[0]) if t.ndim == 0 else t
            null = torch.full((x.shape[0],), self.module.num_classes, dtype=torch.long, device=x.device)
            if y is None:
                return self.module(x, t, u, null)  # (N, C, H, W)
            if cfg_scale == 1.0:
                return self.module(x, t, u, y)  # (N, C, H, W)
            out = self.module(torch.cat([x, x]), torch.cat([t, t]), torch.cat([u, u]), torch.cat([y, null]))  # (2N, C, H, W)
            r_cond, r_uncond = out.chunk(2, dim=0)  # 2 x (N, C, H, W)
            return r_uncond + cfg_scale * (r_cond - r_uncond)  # (N, C, H, W)
        finally:
            self.module.train(was_training)

    def __repr__(self):
        return f"SamplerRefiner({count_params(self.module)} params, {self.config})"


# ---------------------------------------------------------------- base-model fingerprint


def base_fingerprint(model: DiT) -> dict:
    """Identify the base DiT a refiner was distilled from: {"config": dict, "weights_sha256": hex}.

    The hash runs over the state dict (sorted keys, names and shapes included) with every
    floating tensor rounded to float16 first, so the float32 EMA of a training
    checkpoint and its float16 export have the same fingerprint, while any other weights
    (another seed, more steps) differ.
    """
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        v = value.detach().cpu()
        v = v.to(torch.float16) if v.is_floating_point() else v
        h.update(f"{name}:{tuple(v.shape)}:{v.dtype};".encode())
        h.update(v.contiguous().numpy().tobytes())
    return {"config": asdict(model.config), "weights_sha256": h.hexdigest()}


def _check_base(stored: dict, model: DiT, path: str) -> None:
    have = base_fingerprint(model)
    if not isinstance(stored, dict) or stored.get("config") != have["config"]:
        want = stored.get("config") if isinstance(stored, dict) else stored
        diff = {k: (want.get(k) if isinstance(want, dict) else None, v) for k, v in have["config"].items()
                if not isinstance(want, dict) or want.get(k) != v}
        raise CheckpointError(f"refiner {path} was distilled from a base model with another config "
                              f"(stored, given): {diff}")
    if stored.get("weights_sha256") != have["weights_sha256"]:
        raise CheckpointError(f"refiner {path} was distilled from other base weights: stored sha256 "
                              f"{str(stored.get('weights_sha256'))[:12]}..., given {have['weights_sha256'][:12]}...")


# ---------------------------------------------------------------- save / load


def save_refiner(path: str | os.PathLike, refiner: VelocityRefiner, base_model: DiT, meta: dict | None = None) -> None:
    """Write a slim refiner file atomically: {ema, refiner_config, base, meta}.

    Args:
        path: destination.
        refiner: the weights to ship (pass the EMA copy).
        base_model: the frozen DiT it was distilled from; its fingerprint is stored.
        meta: training facts (steps, held-out losses, args, ...), plain python values.
    """
    save_checkpoint(path, ema={k: v.detach().cpu() for k, v in refiner.state_dict().items()},
                    refiner_config=asdict(refiner.config), base=base_fingerprint(base_model), meta=dict(meta or {}))


def refiner_config_from_dict(d, path: str = "<dict>") -> RefinerConfig:
    """RefinerConfig(**d), with a CheckpointError naming unknown or bad fields."""
    if not isinstance(d, dict):
        raise CheckpointError(f"refiner {path}: 'refiner_config' should be a dict, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in fields(RefinerConfig)})
    if unknown:
        raise CheckpointError(f"refiner {path}: refiner_config has unknown fields {unknown}")
    return RefinerConfig(**d)


def load_refiner(path: str | os.PathLike, base_model: DiT, device: str | torch.device = "cpu") -> SamplerRefiner:
    """Load a refiner file for ``base_model`` and return it ready for FlowTurboSampler.

    Args:
        path: a file written by ``save_refiner`` (or a full training checkpoint of
            scripts/train_refiner.py; its EMA weights are used).
        base_model: the DiT the sampler will use; must be the one the refiner was
            distilled from (same config, same weights up to float16 rounding).
        device: where to put the refiner.

    Returns:
        A SamplerRefiner: callable ``(x, t, u, y=None, cfg_scale=1.0, **_) -> r`` of shape
        x.shape, with ``.module`` (the VelocityRefiner, eval mode, float32, on `device`,
        no grad), ``.config`` (RefinerConfig) and ``.meta`` (the stored metadata dict).
        Pass it as ``FlowTurboSampler(..., refiner=load_refiner(path, model))``.

    Raises:
        ValueError (CheckpointError): the file is missing, corrupt, not a refiner file,
            its weights do not fit its config, or it was distilled from another base model.
    """
    path = os.fspath(path)
    payload = load_checkpoint(path, required=REFINER_KEYS, map_location="cpu")
    config = refiner_config_from_dict(payload["refiner_config"], path)
    _check_base(payload["base"], base_model, path)
    if (config.image_size, config.in_channels, config.num_classes) != (
            base_model.config.image_size, base_model.config.in_channels, base_model.config.num_classes):
        raise CheckpointError(f"refiner {path}: config {config} does not fit the base {base_model.config}")
    module = VelocityRefiner(config)
    try:
        module.load_state_dict({k: v.float() for k, v in payload["ema"].items()}, strict=True)
    except (RuntimeError, AttributeError) as e:
        raise CheckpointError(f"refiner {path}: weights do not fit the stored refiner_config: {e}") from e
    module.to(device).eval().requires_grad_(False)
    return SamplerRefiner(module, payload.get("meta", {}))


# ---------------------------------------------------------------- FlowTurbo names

_TURBO = re.compile(r"H(\d+)(?:P(\d+))?(?:R(\d+))?")


def parse_turbo(name: str) -> tuple[int, int, int]:
    """"H1P5R3" -> (1, 5, 3): Heun, pseudo-corrector and refiner block counts.

    P and R parts may be left out ("H2" -> (2, 0, 0), "H1R4" -> (1, 0, 4)); order is
    always H, P, R; letters may be lower case. Whether the counts make a valid sampler
    is checked by FlowTurboSampler.

    Raises:
        ValueError: anything else ("", "P5R3", "H1R3P5", "H1.5", "H-1P2", "Heun").
    """
    if not isinstance(name, str):
        raise ValueError(f"FlowTurbo config must be a string like 'H1P5R3', got {type(name).__name__}")
    m = _TURBO.fullmatch(name.strip().upper())
    if m is None:
        raise ValueError(f"bad FlowTurbo config {name!r}: expected H<a>[P<b>][R<c>] with non-negative "
                         f"integers in that order, e.g. 'H1P5R3'")
    return tuple(int(g) if g is not None else 0 for g in m.groups())
