"""Sample digits from a trained DiT with any sampler of `fastflow`.

With no arguments (the main job): Euler-50 and FastFlow from identical noise and labels,
both grids side by side in one PNG, and a table of NFE, wall time, speedup, PSNR/SSIM
against Euler-50 and classifier accuracy.

    python sample.py                                   # Euler-50 vs FastFlow, 100 digits
    python sample.py --sampler heun --steps 10 --n 64 --cfg 2 --out-npz s.npz
    python sample.py --sampler fastflow --calls 14 --order 2          # the optimal plan for 14 model calls
    python sample.py --sampler fastflow --policy bandit --bandit-state state.json --report-json r.json

Time convention: t = 0 is noise, t = 1 is data; samples are images in [-1, 1].
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

import fastflow as ff
from fastflow.atomic import atomic_write
from fastflow.metrics import classifier_accuracy
from models.cli import (OneLineParser, check_writable, finite_float, nonnegative_float, nonnegative_int, positive_float,
                        positive_int, resolve_device, run_cli, seed_int)
from models.evaluation import (DEFAULT_CKPT, DEFAULT_CLASSIFIER, DEFAULT_REFINER, balanced_labels, fidelity,
                               machine_info, make_noise, run_batched)

SAMPLER_CHOICES = ["euler", "heun", "ab2", "fastflow", "teacache", "taylorseer", "static", "flowturbo"]


def build_sampler(name: str, args, refiner=None) -> ff.Sampler:
    """A sampler from its command-line name and options."""
    if name == "euler":
        return ff.EulerSampler(args.steps)
    if name == "heun":
        return ff.HeunSampler(args.steps)
    if name == "ab2":
        return ff.AdamsBashforthSampler(args.steps, order=2)
    if name == "fastflow":
        paper = args.policy == "paper" or (args.policy is None and (args.mu is not None or args.bandit is not None))
        kw = dict(arms=tuple(args.arms), mu=args.mu, bandit=args.bandit) if paper else {}
        return ff.FastFlowSampler(args.steps, calls=args.calls, tolerance=args.tolerance,
                                  policy="paper" if paper else (args.policy or "plan"), order=args.order,
                                  base=args.base, generator=torch.Generator().manual_seed(args.seed), **kw)
    if name == "teacache":
        return ff.TeaCacheSampler(args.steps, threshold=args.threshold)
    if name == "taylorseer":
        return ff.TaylorSeerSampler(args.steps, interval=args.interval)
    if name == "static":
        return ff.ExtrapolatedEulerSampler(args.steps, ff.static_skip_schedule(args.steps, args.order), args.order)
    if name == "flowturbo":
        from models.refiner import parse_turbo
        a, b, c = parse_turbo(args.turbo)
        return ff.FlowTurboSampler(heun=a, pseudo=b, refine=c, refiner=refiner)
    raise ValueError(f"unknown sampler '{name}', choose from {SAMPLER_CHOICES}")


def warm_up_bandit(sampler: ff.FastFlowSampler, velocity, shape, labels, args, device) -> None:
    """Calibrate, and let a learning policy learn on ``args.warmup`` batches of other noise before
    measuring (the plan policy learns nothing after its calibration run: one batch)."""
    batches = args.warmup if sampler.policy_name != "plan" else min(args.warmup, 0 if sampler.calibrated else 1)
    for i in tqdm(range(batches), desc="calibration and warm-up", leave=False, disable=args.quiet):
        x0 = make_noise(labels.shape[0], shape, seed=args.seed + 1_000_003 * (i + 1)).to(device)  # other noise
        sampler.sample(velocity, x0, y=labels.to(device), cfg_scale=args.cfg)


def state_tag(args) -> str:
    """What a saved FastFlow state is tied to beyond the sampler's own settings: the model file
    (name and size), the guidance scale and the labels."""
    size = os.path.getsize(args.ckpt) if os.path.exists(args.ckpt) else "?"
    labels = f"class {args.cls}" if args.cls is not None else "all classes"
    return f"{os.path.basename(args.ckpt)} ({size} bytes), cfg {args.cfg:g}, {labels}"


def grid_image(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] as one (C, H', W') grid in [0, 1]."""
    from torchvision.utils import make_grid
    return make_grid((images.clamp(-1, 1) + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)


def side_by_side(left: torch.Tensor, right: torch.Tensor, nrow: int) -> torch.Tensor:
    """Two image grids next to each other, separated by a blank column."""
    grids = [grid_image(im, nrow) for im in (left, right)]
    gap = torch.ones(grids[0].shape[0], grids[0].shape[1], 8)
    return torch.cat([grids[0], gap, grids[1]], dim=2)


def write_png(grid: torch.Tensor, path: str) -> None:
    from torchvision.utils import save_image
    atomic_write(path, lambda f: save_image(grid, f, format="PNG"))


def write_npz(images: torch.Tensor, labels: torch.Tensor, path: str) -> None:
    """uint8 N x H x W x C images and their labels, at exactly ``path`` (no suffix added)."""
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    atomic_write(path, lambda f: np.savez(f, images=u8, labels=labels.numpy()))


def write_json(report: dict, path: str) -> None:
    atomic_write(path, lambda f: json.dump(report, f, indent=1), binary=False)


@dataclass
class Setup:
    """Everything a run needs, loaded and checked before the first model call."""
    device: torch.device
    model: torch.nn.Module
    config: object
    samplers: dict
    classifier: object = None
    outputs: dict = field(default_factory=dict)  # flag -> path, every one proved writable


def prepare(args) -> Setup:
    """Check every flag, path and file a run will touch, so that a run that cannot finish its
    outputs never starts. Raises ValueError or OSError naming the flag and the path."""
    from models.checkpoint import load_model
    device = resolve_device(args.device)
    names = ["euler", "fastflow"] if args.sampler is None else [args.sampler]
    outputs = {"--out": args.out or ("results/euler_vs_fastflow.png" if args.sampler is None
                                     else f"results/samples_{args.sampler}.png")}
    for flag, path in (("--out-npz", args.out_npz), ("--report-json", args.report_json)):
        if path:
            outputs[flag] = path
    if args.bandit_state and "fastflow" in names:
        outputs["--bandit-state"] = args.bandit_state
    for flag, path in outputs.items():
        check_writable(path, flag)
    if len(set(os.path.abspath(p) for p in outputs.values())) < len(outputs):
        raise ValueError(f"two outputs share one path: {outputs}")

    model, config, _ = load_model(args.ckpt, device=device)
    if args.cls is not None and not 0 <= args.cls < config.num_classes:
        raise ValueError(f"--class {args.cls} is out of range: the model has classes 0..{config.num_classes - 1}")
    refiner = None
    if args.sampler == "flowturbo":
        from models.refiner import load_refiner, parse_turbo
        if parse_turbo(args.turbo)[2] > 0:
            refiner = load_refiner(args.refiner, model, device=device)
    samplers = {name: build_sampler(name, args, refiner) for name in names}
    for sampler in samplers.values():
        if isinstance(sampler, ff.FastFlowSampler) and args.bandit_state and os.path.exists(args.bandit_state):
            sampler.load_state(args.bandit_state, tag=state_tag(args))

    classifier = None
    if args.classifier is not None or os.path.exists(DEFAULT_CLASSIFIER):
        from models.classifier import load_classifier
        classifier = load_classifier(args.classifier or DEFAULT_CLASSIFIER)
    elif not args.quiet:
        print(f"no classifier at {DEFAULT_CLASSIFIER}: accuracy is not reported (pass --classifier)")
    return Setup(device, model, config, samplers, classifier, outputs)


def write_outputs(writers: dict) -> None:
    """Write every output; one that fails does not stop the others.

    Args:
        writers: flag -> (path, write()) in the order to write.
    Raises:
        OSError: after trying them all, naming each output that failed and those that were written.
    """
    failed, written = [], []
    for flag, (path, write) in writers.items():
        try:
            write()
            written.append(f"{flag} {path}")
        except (OSError, ValueError, RuntimeError) as e:
            failed.append(f"{flag} {path} ({' '.join(str(e).split())})")
    if failed:
        raise OSError(f"could not write {'; '.join(failed)}; written: {', '.join(written) or 'nothing'}")


def main(args) -> dict:
    setup = prepare(args)
    model, config, device = setup.model, setup.config, setup.device
    shape = (config.in_channels, config.image_size, config.image_size)
    labels = balanced_labels(args.n, config.num_classes, args.cls)
    x0 = make_noise(args.n, shape, args.seed)
    velocity = model.forward_with_cfg
    with torch.no_grad():  # warm the model up so that timings exclude first-call costs
        velocity(x=x0[:2].to(device), t=torch.zeros(2, device=device), y=labels[:2].to(device), cfg_scale=args.cfg)
    progress = (lambda it: tqdm(it, desc="batches", leave=False)) if not args.quiet else None

    runs = {}
    for name, sampler in setup.samplers.items():
        if isinstance(sampler, ff.FastFlowSampler):
            warm_up_bandit(sampler, velocity, shape, labels[:args.warmup_batch_size], args, device)
        runs[name] = run_batched(sampler, velocity, x0, labels, args.batch_size, device, progress, cfg_scale=args.cfg)

    rows = []
    base = runs.get("euler")
    for name, run in runs.items():
        sampler = setup.samplers[name]
        row = {"sampler": name, "steps": sampler.steps, "nfe": run.nfe, "sampling_seconds": run.seconds}
        if base is not None:
            row["speedup"] = base.seconds / run.seconds
            if run is not base:
                row["psnr_vs_euler"], row["ssim_vs_euler"] = fidelity(run.images, base.images)
        if setup.classifier is not None:
            row["accuracy"] = classifier_accuracy(setup.classifier, run.images, labels)
        if isinstance(sampler, ff.FastFlowSampler):
            row.update(policy=sampler.policy_name, calls_target=sampler.calls_target, mu=sampler.mu)
        if isinstance(sampler, ff.FlowTurboSampler):
            row["turbo"] = f"H{sampler.heun}P{sampler.pseudo}R{sampler.refine}"
            row["refiner_calls"] = sum(r.info["refiner_calls"] for r in run.results) / len(run.results)
        rows.append(row)
    print_table(rows)

    last = list(runs)[-1]
    nrow = min(10, args.n)
    grid = (side_by_side(runs["euler"].images, runs["fastflow"].images, nrow) if args.sampler is None
            else grid_image(runs[last].images, nrow))
    report = {**rows[-1], "n": args.n, "seed": args.seed, "cfg": args.cfg, "batch_size": args.batch_size,
              "rows": rows, "machine": machine_info(device)}
    out = setup.outputs
    writers = {"--out": (out["--out"], lambda: write_png(grid, out["--out"]))}
    if "--out-npz" in out:
        writers["--out-npz"] = (out["--out-npz"], lambda: write_npz(runs[last].images, labels, out["--out-npz"]))
    if "--bandit-state" in out:
        writers["--bandit-state"] = (out["--bandit-state"], lambda: setup.samplers["fastflow"].save_state(
            out["--bandit-state"], tag=state_tag(args)))
    if "--report-json" in out:
        writers["--report-json"] = (out["--report-json"], lambda: write_json(report, out["--report-json"]))
    write_outputs(writers)
    print(f"grid: {out['--out']}")
    return report


def print_table(rows: list[dict]) -> None:
    def fmt(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else "-"
    print(f"{'sampler':10s} {'NFE':>6s} {'wall s':>8s} {'speedup':>8s} {'PSNR dB':>8s} {'SSIM':>6s} {'acc':>6s}")
    for r in rows:
        print(f"{r['sampler']:10s} {r['nfe']:6.1f} {r['sampling_seconds']:8.3f} {fmt(r.get('speedup'), '8.2f')} "
              f"{fmt(r.get('psnr_vs_euler'), '8.2f')} {fmt(r.get('ssim_vs_euler'), '6.4f')} {fmt(r.get('accuracy'), '6.3f')}")


def build_parser(prog: str = "sample.py", description: str = __doc__) -> OneLineParser:
    """sample.py's flags (``sample_ddp.py`` shares them)."""
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
    p.add_argument("--out", default=None, help="PNG grid path (None: results/euler_vs_fastflow.png, or "
                                               "results/samples_<sampler>.png with --sampler)")
    p.add_argument("--out-npz", default=None, help="write images (uint8, N x H x W x C) and labels to exactly "
                                                   "this path")
    p.add_argument("--report-json", default=None, help="write the table and settings as JSON here")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    g = p.add_argument_group("FastFlow (first batch: a full calibration run on other noise)")
    g.add_argument("--policy", choices=list(ff.POLICIES), default=None,
                   help="how skips are chosen: the optimal plan of the calibration run, a planning bandit, or the "
                        "paper's per-step bandit (None: plan; paper if --mu or --bandit is given)")
    g.add_argument("--calls", type=positive_int, default=None,
                   help="model calls per run (exclusive with --tolerance)")
    g.add_argument("--tolerance", type=positive_float, default=None,
                   help="dimensionless: the skips may add this times Euler-T's own estimated error; fewest calls "
                        f"that fit (None: {ff.DEFAULT_TOLERANCE:g} when --calls is not given)")
    g.add_argument("--mu", type=nonnegative_float, default=None,
                   help="paper policy: reward per skipped step, in units of relative velocity error "
                        "||v_hat - v|| / ||v|| (None: calibrate as max one-step error / T)")
    g.add_argument("--arms", type=nonnegative_int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="paper policy: the run lengths (steps skipped in a row) the bandit chooses among")
    g.add_argument("--order", type=positive_int, default=1,
                   help="extrapolation order p: a skipped velocity is the degree-p polynomial through the last "
                        "p + 1 real ones")
    g.add_argument("--base", choices=["euler", "ab2"], default="euler",
                   help="update the velocities feed: euler (the paper's; reproduces Euler-T) or ab2 (second "
                        "order; closer to the exact flow at equal calls)")
    g.add_argument("--bandit", choices=sorted(ff.BANDITS), default=None, help="paper policy's bandit (ucb1)")
    g.add_argument("--warmup", type=nonnegative_int, default=10,
                   help="learning-policy warm-up batches on other noise")
    g.add_argument("--warmup-batch-size", type=positive_int, default=25, help="samples per warm-up batch")
    g.add_argument("--bandit-state", default=None, help="load the bandit from FILE if it exists, save it back")
    g = p.add_argument_group("other samplers")
    g.add_argument("--threshold", type=nonnegative_float, default=0.1, help="TeaCache relative-L1 threshold")
    g.add_argument("--interval", type=positive_int, default=3, help="TaylorSeer full-step interval")
    g.add_argument("--turbo", default="H1P5R3", help="FlowTurbo blocks: Heun, pseudo-corrector, refiner counts")
    g.add_argument("--refiner", default=DEFAULT_REFINER, help="FlowTurbo's velocity refiner checkpoint")
    g = p.add_argument_group("evaluation")
    g.add_argument("--classifier", default=None,
                   help=f"digit classifier for the accuracy column (None: {DEFAULT_CLASSIFIER} if present; "
                        "a path given here must exist)")
    return p


def parse_checked(p: OneLineParser, argv=None):
    """Parse, and report a device this machine lacks as a bad flag."""
    args = p.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as e:
        p.error(f"argument --device: {e}")
    return args


def parse_args(argv=None):
    return parse_checked(build_parser(), argv)


def cli(argv=None) -> int:
    """Run sample.py; bad input ends with a one-line error and exit status 1 (2 for bad flags)."""
    return run_cli(main, parse_args(argv), "sample.py")


if __name__ == "__main__":
    sys.exit(cli())
