"""What edit.py and benchmarks/editing.py share: the sources an edit starts from, the edit of one
configuration (its samplers, one per pass) and the checks of its settings (fastflow.editing).

Time convention: t = 0 is noise, t = 1 is data; images are in [-1, 1].
"""
from __future__ import annotations

import numpy as np
import torch

import fastflow as ff
from fastflow import editing, grids
from models.evaluation import make_noise

METHODS = ("sdedit", "invert", "flowedit")


def check_args(args, num_classes: int) -> None:
    """Every flag a run depends on, before any model call.

    Raises:
        ValueError: naming the flag.
    """
    if args.method != "invert" and not 0.0 < args.t0 < 1.0:
        raise ValueError(f"--t0 must lie in (0, 1), got {args.t0}")
    if args.target_class != "source":
        if not args.target_class.lstrip("-").isdigit() or not 0 <= int(args.target_class) < num_classes:
            raise ValueError(f"--target-class must be 'source' or a class in 0..{num_classes - 1}, "
                             f"got {args.target_class!r}")
    if args.calls is not None and args.sampler != "fastflow":
        raise ValueError("--calls sets FastFlow's budget: give --sampler fastflow with it")
    if getattr(args, "state", None) and args.sampler != "fastflow":
        raise ValueError("--state keeps FastFlow's calibration: give --sampler fastflow with it")


def state_settings(args, model_tag: str) -> dict:
    """What an edit's FastFlow state belongs to (fastflow.editing.save_state): the path's settings."""
    flow = args.method == "flowedit"
    return {"method": args.method, "steps": args.steps, "t0": None if args.method == "invert" else args.t0,
            "cfg": args.cfg, "target": args.target_class, "n_avg": args.n_avg if flow else None,
            "noise": args.noise if flow else None, "model": model_tag}


def load_sources(args, config, device):
    """(sources (N, C, H, W) in [-1, 1], their labels, calibration sources, their labels).

    Raises:
        ValueError: for an --image of another size or channels than the model, or a split with
            too few digits of another class than the target.
    """
    shape = (config.in_channels, config.image_size, config.image_size)
    if args.image is not None:
        from torchvision.io import ImageReadMode, read_image
        mode = ImageReadMode.GRAY if config.in_channels == 1 else ImageReadMode.RGB
        img = read_image(args.image, mode=mode)
        if tuple(img.shape) != shape:
            raise ValueError(f"--image {args.image}: {tuple(img.shape)} (C, H, W), the model takes {shape}")
        x = (img.float() / 127.5 - 1.0)[None]
        return x.to(device), torch.zeros(1, dtype=torch.long), x.to(device), torch.zeros(1, dtype=torch.long)
    from models.data import build_dataset
    data, _ = build_dataset("mnist", args.data_root, train=args.split == "train", image_size=config.image_size)
    labels = data.labels
    keep = torch.arange(len(labels)) if args.target_class == "source" else \
        (labels != int(args.target_class)).nonzero().flatten()
    need = args.n + (args.calibration_samples if args.sampler == "fastflow" else 0)
    if len(keep) < need:
        raise ValueError(f"the {args.split} split has {len(keep)} usable sources, {need} are needed")
    pick = keep[:args.n]
    cal = keep[args.n:need] if args.sampler == "fastflow" else pick[:1]
    images = lambda idx: torch.stack([data[int(i)][0] for i in idx]).to(device)  # noqa: E731
    return images(pick), labels[pick], images(cal), labels[cal]


def pass_sampler(args, times):
    if args.sampler == "fastflow":
        return ff.FastFlowSampler(times=times, calls=args.calls)
    return ff.EulerSampler(times=times)


class Editor:
    """One edit configuration: its samplers (one per pass), run on any sources."""

    def __init__(self, args, velocity, shape, device, full: bool = False):
        self.args, self.velocity, self.shape, self.device = args, velocity, shape, device
        T, t0 = args.steps, args.t0
        make = (lambda g: ff.EulerSampler(times=g)) if full else (lambda g: pass_sampler(args, g))
        if args.method == "invert":
            self.samplers = [make(grids.interval(T, 1.0, 0.0)), make(grids.interval(T))]
        else:
            self.samplers = [make(grids.interval(T, t0))]

    def __call__(self, sources, src_labels, tgt_labels):
        """(edits, model calls per source) for (N, C, H, W) sources."""
        a, v, d = self.args, self.velocity, self.device
        src = {"y": src_labels.to(d), "cfg_scale": 1.0}
        tgt = {"y": tgt_labels.to(d), "cfg_scale": a.cfg}
        if a.method == "invert":
            back, fwd = self.samplers
            z = editing.invert(back, v, sources, **src)
            out = fwd.sample(v, z.x, **tgt)
            return out.x, z.nfe + out.nfe
        if a.method == "sdedit":
            noise = make_noise(sources.shape[0], self.shape, a.seed).to(d)
            out = editing.sdedit(self.samplers[0], v, sources, a.t0, noise, **tgt)
            return out.x, out.nfe
        out = editing.flowedit(self.samplers[0], v, sources, src, tgt, a.t0, n_avg=a.n_avg, seed=a.seed, noise=a.noise)
        return out.x, out.info["model_calls"]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
