"""What sample.py and sample_ddp.py share: their flags, the sampler a command line names, the model
(and refiner) loader, a sample's shape, the FastFlow calibration and warm-up, state tags and the
PNG / JSON writers.

Time convention: t = 0 is noise, t = 1 is data; samples are images (N, C, H, W) or, from a video
model, clips (N, F, C, H, W), in [-1, 1].
"""
from __future__ import annotations

import json
import os

import torch
from tqdm import tqdm

import fastflow as ff
from fastflow.atomic import atomic_write
from models.cli import (OneLineParser, finite_float, nonnegative_float, nonnegative_int, positive_float, positive_int,
                        resolve_device, seed_int)
from models.evaluation import DEFAULT_CKPT, DEFAULT_REFINER, make_noise

SAMPLER_CHOICES = list(ff.SAMPLERS)


def sampler_settings(name: str, args, refiner=None) -> dict:
    """The keyword settings of sampler ``name`` (``fastflow.SAMPLERS``) that the command line gives."""
    if name == "flowturbo":
        from models.refiner import parse_turbo
        a, b, c = parse_turbo(args.turbo)
        return dict(heun=a, pseudo=b, refine=c, refiner=refiner)
    if name == "fastflow":
        paper = args.policy == "paper" or (args.policy is None and (args.mu is not None or args.bandit is not None))
        policy = ff.PaperBandit(arms=tuple(args.arms), mu=args.mu, kind=args.bandit or "ucb1",
                                generator=torch.Generator().manual_seed(args.seed)) if paper else (args.policy or "plan")
        return dict(steps=args.steps, calls=args.calls, tolerance=args.tolerance, policy=policy,
                    extrapolation_order=args.order, base=args.base)
    if name == "best":  # fastflow.choice.BudgetSampler; target: the exact flow
        return dict(steps=args.steps, calls=args.calls, tolerance=None if args.calls else (args.tolerance or 0.02),
                    refine=args.refine)
    own = {"teacache": dict(threshold=args.threshold), "taylorseer": dict(interval=args.interval),
           "static": dict(order=args.order)}
    return dict(steps=args.steps, **own.get(name, {}))


def build_sampler(name: str, args, refiner=None) -> ff.Sampler:
    """A sampler from its command-line name and options (``fastflow.make_sampler``)."""
    return ff.make_sampler(name, **sampler_settings(name, args, refiner))


def load_for_sampling(args, device: torch.device, kind: str | None = None):
    """The model of ``--ckpt`` on ``device``, checked against ``--class``, and FlowTurbo's refiner
    (``--refiner``) when ``--sampler flowturbo`` has refiner blocks (else None).

    Args:
        kind: "image" or "video" to refuse the other kind of model (``load_model``); None: either.
    Returns:
        (model, config, refiner).
    Raises:
        ValueError: --class out of the model's range; refiner blocks for a video model (the
        refiner is an image model); what load_model / load_refiner raise for a missing or corrupt
        file or a model of the other kind.
    """
    from models.checkpoint import load_model
    model, config, _ = load_model(args.ckpt, device=device, kind=kind)
    if args.cls is not None and not 0 <= args.cls < config.num_classes:
        raise ValueError(f"--class {args.cls} is out of range: the model has classes 0..{config.num_classes - 1}")
    refiner = None
    if args.sampler == "flowturbo":
        from models.refiner import load_refiner, parse_turbo
        heun, pseudo, refine = parse_turbo(args.turbo)
        if refine > 0 and is_video(config):
            raise ValueError(f"--turbo {args.turbo}: FlowTurbo's refiner (--refiner) is an image model and cannot "
                             f"refine clips of {args.ckpt}; use blocks without R for a video model, e.g. "
                             f"--turbo H{heun}P{pseudo}")
        if refine > 0:
            refiner = load_refiner(args.refiner, model, device=device)
    return model, config, refiner


def is_video(config) -> bool:
    """Whether a model config is a video model's (it has a frame count)."""
    return hasattr(config, "frames")


def sample_shape(config) -> tuple[int, ...]:
    """The shape of one sample: (F, C, H, W) for a video model's config, (C, H, W) for an image model's."""
    image = (config.in_channels, config.image_size, config.image_size)
    return (config.frames, *image) if is_video(config) else image


def calibrates(sampler) -> bool:
    """Whether ``sampler`` has a calibration to make before it is measured (FastFlow's)."""
    return callable(getattr(sampler, "calibrate", None))


def calibrate_and_warm_up(sampler, velocity, batch, batches: int, progress=None) -> list:
    """The one warm-up every script runs before it measures a FastFlow sampler: ``batch(i)`` gives
    warm-up batch i as (x, extras); the first calibrates (``sampler.calibrate``) unless the sampler
    is calibrated already, the others sample (a learning policy learns from them). Returns their
    results. ``progress`` wraps the range of batches (e.g. a tqdm)."""
    results = []
    for i in (progress(range(batches)) if progress else range(batches)):
        x, extras = batch(i)
        results.append((sampler.sample if sampler.calibrated else sampler.calibrate)(velocity, x, **extras))
    return results


def warm_up_bandit(sampler: ff.FastFlowSampler, velocity, shape, labels, args, device) -> None:
    """Calibrate (unless a calibrated state was loaded), then let a learning policy learn on the
    rest of ``args.warmup`` batches, each on other noise than the measured run (the plan policy
    learns nothing after its calibration run: one batch)."""
    learns = getattr(sampler, "policy_name", "plan") != "plan"  # a plan (and the budget choice) learns once
    batches = args.warmup if learns else min(args.warmup, 0 if sampler.calibrated else 1)
    extras = {"y": labels.to(device), "cfg_scale": args.cfg}
    other_noise = lambda i: (make_noise(labels.shape[0], shape, seed=args.seed + 1_000_003 * (i + 1)).to(device),  # noqa: E731
                             extras)
    calibrate_and_warm_up(sampler, velocity, other_noise, batches,
                          lambda r: tqdm(r, desc="calibration and warm-up", leave=False, disable=args.quiet))


def model_tag(ckpt: str) -> str:
    """The model file a saved state belongs to: its name and the sha256 of its bytes, so a
    retrained model of the same size is another model."""
    from models.checkpoint import file_sha256
    digest = file_sha256(ckpt) if os.path.isfile(ckpt) else "?"
    return f"{os.path.basename(ckpt)} (sha256 {digest})"


def state_tag(args) -> str:
    """What a saved FastFlow state is tied to beyond the sampler's own settings: the model file
    (``model_tag``), the guidance scale and the labels."""
    labels = f"class {args.cls}" if args.cls is not None else "all classes"
    return f"{model_tag(args.ckpt)}, cfg {args.cfg:g}, {labels}"


def grid_image(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] as one (C, H', W') grid in [0, 1]."""
    from torchvision.utils import make_grid
    return make_grid((images.clamp(-1, 1) + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)


def write_png(grid: torch.Tensor, path: str) -> None:
    from torchvision.utils import save_image
    atomic_write(path, lambda f: save_image(grid, f, format="PNG"))


def write_json(report: dict, path: str) -> None:
    atomic_write(path, lambda f: json.dump(report, f, indent=1), binary=False)


def build_parser(prog: str = "sample.py", description: str | None = None) -> OneLineParser:
    """sample.py's flags (``sample_ddp.py`` shares them); sample.py passes its docstring as ``description``."""
    p = OneLineParser(prog=prog, description=description)
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="model checkpoint (the shipped MNIST DiT)")
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                   help="one sampler; omit to compare Euler and FastFlow side by side")
    p.add_argument("--steps", type=positive_int, default=50,
                   help="grid steps T (FlowTurbo ignores it: its blocks set the steps)")
    p.add_argument("--cfg", type=finite_float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--num-samples", "--n", dest="n", type=positive_int, default=100, help="number of samples")
    p.add_argument("--batch-size", type=positive_int, default=100, help="samples per sampler call")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed; labels are 0, 1, 2, ... in turn")
    p.add_argument("--class", dest="cls", type=int, default=None, help="one class for all samples")
    p.add_argument("--out", default=None, help="PNG grid path (default: outputs/euler_vs_fastflow.png, or "
                                               "outputs/samples_<sampler>.png with --sampler); a video model's "
                                               "clips (sample.py): .gif, animated, the clips tiled, or .png, one "
                                               "row of frames per clip")
    p.add_argument("--out-npz", default=None, help="write the samples to exactly this path: arr_0 the images "
                                                   "(uint8, N x H x W x C; clips N x F x H x W x C), arr_1 the "
                                                   "labels (the ADM evaluation layout), and the same as images / "
                                                   "labels")
    p.add_argument("--report-json", default=None, help="write the table and settings as JSON here")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    g = p.add_argument_group("FastFlow (first batch: a full calibration run on other noise)")
    g.add_argument("--policy", choices=list(ff.controller.POLICIES), default=None,
                   help="how skips are chosen: the optimal plan of the calibration run, a planning bandit, or the "
                        "paper's per-step bandit (default: plan; paper if --mu or --bandit is given)")
    g.add_argument("--calls", type=positive_int, default=None,
                   help="model calls per run (exclusive with --tolerance)")
    g.add_argument("--tolerance", type=positive_float, default=None,
                   help="dimensionless: the skips may add this times Euler-T's own estimated error; fewest calls "
                        f"that fit (default: {ff.controller.DEFAULT_TOLERANCE:g} when --calls is not given)")
    g.add_argument("--mu", type=nonnegative_float, default=None,
                   help="paper policy: reward per skipped step, in units of relative velocity error "
                        "||v_hat - v|| / ||v|| (default: calibrate as max one-step error / T)")
    g.add_argument("--arms", type=nonnegative_int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="paper policy: the run lengths (steps skipped in a row) the bandit chooses among")
    g.add_argument("--order", type=positive_int, default=1,
                   help="extrapolation order p: a skipped velocity is the degree-p polynomial through the last "
                        "p + 1 real ones")
    g.add_argument("--base", choices=["euler", "ab2"], default="euler",
                   help="update the velocities feed: euler (the paper's; reproduces Euler-T) or ab2 (second "
                        "order; closer to the exact flow at equal calls)")
    g.add_argument("--bandit", choices=sorted(ff.bandit.BANDITS), default=None, help="paper policy's bandit (ucb1)")
    g.add_argument("--refine", type=nonnegative_int, default=ff.choice.REFINE_EVALS,
                   help="--sampler best: most replays (K calls each, on the calibration batch) spent tuning the "
                        "chosen grid's times; 0: none")
    g.add_argument("--warmup", type=nonnegative_int, default=10,
                   help="FastFlow's calibration and learning-policy warm-up batches on other noise (not a "
                        "learning-rate warm-up: train.py calls that --lr-warmup)")
    g.add_argument("--warmup-batch-size", type=positive_int, default=25, help="samples per warm-up batch")
    g.add_argument("--bandit-state", default=None, help="load the bandit from FILE if it exists, save it back")
    g = p.add_argument_group("other samplers")
    g.add_argument("--threshold", type=nonnegative_float, default=0.1, help="TeaCache relative-L1 threshold")
    g.add_argument("--interval", type=positive_int, default=3, help="TaylorSeer full-step interval")
    g.add_argument("--turbo", default="H1P5R3", help="FlowTurbo blocks: Heun, pseudo-corrector, refiner counts")
    g.add_argument("--refiner", default=DEFAULT_REFINER, help="FlowTurbo's velocity refiner checkpoint")
    g = p.add_argument_group("evaluation")
    g.add_argument("--classifier", default=None,
                   help="classifier for the accuracy column, of the model's dataset (default: the shipped one, "
                        "checkpoints/mnist_classifier.pt or fashion_classifier.pt, if present; a path given here must "
                        "exist)")
    return p


def parse_checked(p: OneLineParser, argv=None):
    """Parse, and report a device this machine lacks as a bad flag."""
    args = p.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as e:
        p.error(f"argument --device: {e}")
    return args
