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

import argparse
import json
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

import fastflow as ff
from models.evaluation import (DEFAULT_CKPT, DEFAULT_CLASSIFIER, DEFAULT_FEATURE_STATS, DEFAULT_REFINER, Judge,
                        balanced_labels, fidelity, machine_info, make_noise, run_batched, save_grid)

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


def side_by_side(left: torch.Tensor, right: torch.Tensor, path: str, nrow: int) -> None:
    """Two image grids next to each other, separated by a blank column."""
    from torchvision.utils import make_grid
    grids = [make_grid((im + 1) / 2, nrow=nrow, padding=2, pad_value=1.0) for im in (left, right)]
    gap = torch.ones(grids[0].shape[0], grids[0].shape[1], 8)
    from torchvision.utils import save_image
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_image(torch.cat([grids[0], gap, grids[1]], dim=2), path)


def load(args):
    from models.checkpoint import load_model
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, config, _ = load_model(args.ckpt, device=device)
    if args.n <= 0:
        raise ValueError(f"--n must be > 0, got {args.n}")
    if args.cls is not None and not 0 <= args.cls < config.num_classes:
        raise ValueError(f"--class {args.cls} is out of range: the model has classes 0..{config.num_classes - 1}")
    refiner = None
    if args.sampler == "flowturbo":
        from models.refiner import load_refiner
        refiner = load_refiner(args.refiner, model, device=device)
    return model, config, device, refiner


def main(args) -> dict:
    model, config, device, refiner = load(args)
    shape = (config.in_channels, config.image_size, config.image_size)
    labels = balanced_labels(args.n, config.num_classes, args.cls)
    x0 = make_noise(args.n, shape, args.seed)
    velocity = model.forward_with_cfg
    with torch.no_grad():  # warm the model up so that timings exclude first-call costs
        velocity(x=x0[:2].to(device), t=torch.zeros(2, device=device), y=labels[:2].to(device), cfg_scale=args.cfg)
    progress = (lambda it: tqdm(it, desc="batches", leave=False)) if not args.quiet else None

    names = ["euler", "fastflow"] if args.sampler is None else [args.sampler]
    runs, samplers = {}, {}
    for name in names:
        sampler = build_sampler(name, args, refiner)
        if isinstance(sampler, ff.FastFlowSampler):
            if args.bandit_state and os.path.exists(args.bandit_state):
                sampler.load_state(args.bandit_state)
            warm_up_bandit(sampler, velocity, shape, labels[:args.warmup_batch_size], args, device)
        runs[name] = run_batched(sampler, velocity, x0, labels, args.batch_size, device, progress, cfg_scale=args.cfg)
        samplers[name] = sampler
        if isinstance(sampler, ff.FastFlowSampler) and args.bandit_state:
            sampler.save_state(args.bandit_state)

    judge = Judge(args.classifier, args.feature_stats) if os.path.exists(args.classifier) else None
    rows = []
    base = runs.get("euler")
    for name, run in runs.items():
        row = {"sampler": name, "steps": args.steps, "nfe": run.nfe, "sampling_seconds": run.seconds}
        if base is not None:
            row["speedup"] = base.seconds / run.seconds
            if run is not base:
                row["psnr_vs_euler"], row["ssim_vs_euler"] = fidelity(run.images, base.images)
        if judge is not None:
            row["accuracy"] = judge.accuracy(run.images, labels)
        if isinstance(samplers[name], ff.FastFlowSampler):
            row.update(policy=samplers[name].policy_name, calls_target=samplers[name].calls_target,
                       mu=samplers[name].mu)
        if isinstance(samplers[name], ff.FlowTurboSampler):
            row["refiner_calls"] = sum(r.info["refiner_calls"] for r in run.results) / len(run.results)
        rows.append(row)

    nrow = min(10, args.n)
    if args.sampler is None:
        out = args.out or "results/euler_vs_fastflow.png"
        side_by_side(runs["euler"].images, runs["fastflow"].images, out, nrow)
    else:
        out = args.out or f"results/samples_{args.sampler}.png"
        save_grid(runs[args.sampler].images, out, nrow)
    print_table(rows)
    print(f"grid: {out}")

    if args.out_npz:
        images = runs[names[-1]].images
        u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        np.savez(args.out_npz, images=u8, labels=labels.numpy())
    report = {**rows[-1], "sampler": names[-1], "n": args.n, "seed": args.seed, "cfg": args.cfg,
              "batch_size": args.batch_size, "rows": rows, "machine": machine_info(device)}
    if args.report_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.report_json)), exist_ok=True)
        with open(args.report_json, "w") as f:
            json.dump(report, f, indent=1)
    return report


def print_table(rows: list[dict]) -> None:
    def fmt(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else "-"
    print(f"{'sampler':10s} {'NFE':>6s} {'wall s':>8s} {'speedup':>8s} {'PSNR dB':>8s} {'SSIM':>6s} {'acc':>6s}")
    for r in rows:
        print(f"{r['sampler']:10s} {r['nfe']:6.1f} {r['sampling_seconds']:8.3f} {fmt(r.get('speedup'), '8.2f')} "
              f"{fmt(r.get('psnr_vs_euler'), '8.2f')} {fmt(r.get('ssim_vs_euler'), '6.4f')} {fmt(r.get('accuracy'), '6.3f')}")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments on a single line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv=None):
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="model checkpoint (default: the shipped MNIST DiT)")
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                   help="one sampler; omit to compare Euler and FastFlow side by side")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--n", type=int, default=100, help="number of samples")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class", dest="cls", type=int, default=None, help="one class for all samples")
    p.add_argument("--out", default=None, help="PNG grid path")
    p.add_argument("--out-npz", default=None, help="write images (uint8, N x H x W x C) and labels here")
    p.add_argument("--report-json", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("FastFlow (first batch: a full calibration run on other noise)")
    g.add_argument("--policy", choices=list(ff.POLICIES), default=None,
                   help="how skips are chosen: the optimal plan of the calibration run, a planning bandit, or the "
                        "paper's per-step bandit (default: plan; paper if --mu or --bandit is given)")
    g.add_argument("--calls", type=int, default=None, help="model calls per run (exclusive with --tolerance)")
    g.add_argument("--tolerance", type=float, default=None,
                   help="dimensionless: the skips may add this times Euler-T's own estimated error; fewest calls "
                        f"that fit (default {ff.DEFAULT_TOLERANCE:g} when --calls is not given)")
    g.add_argument("--mu", type=float, default=None,
                   help="paper policy: reward per skipped step, in units of relative velocity error "
                        "||v_hat - v|| / ||v|| (default: calibrate as max one-step error / T)")
    g.add_argument("--arms", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="paper policy: run lengths")
    g.add_argument("--order", type=int, default=1, help="extrapolation order p")
    g.add_argument("--base", choices=["euler", "ab2"], default="euler",
                   help="update the velocities feed: euler (the paper's; reproduces Euler-T) or ab2 (second "
                        "order; closer to the exact flow at equal calls) (default: euler)")
    g.add_argument("--bandit", choices=sorted(ff.BANDITS), default=None, help="paper policy's bandit (ucb1)")
    g.add_argument("--warmup", type=int, default=10, help="learning-policy warm-up batches on other noise")
    g.add_argument("--warmup-batch-size", type=int, default=25, help="samples per warm-up batch")
    g.add_argument("--bandit-state", default=None, help="load the bandit from FILE if it exists, save it back")
    g = p.add_argument_group("other samplers")
    g.add_argument("--threshold", type=float, default=0.1, help="TeaCache relative-L1 threshold")
    g.add_argument("--interval", type=int, default=3, help="TaylorSeer full-step interval")
    g.add_argument("--turbo", default="H1P5R3", help="FlowTurbo blocks, e.g. H1P5R3")
    g.add_argument("--refiner", default=DEFAULT_REFINER)
    g = p.add_argument_group("evaluation")
    g.add_argument("--classifier", default=DEFAULT_CLASSIFIER)
    g.add_argument("--feature-stats", default=DEFAULT_FEATURE_STATS)
    return p.parse_args(argv)


def cli(argv=None) -> int:
    """Run sample.py; bad input ends with a one-line error and exit status 1 (2 for bad flags)."""
    args = parse_args(argv)
    try:
        main(args)
    except (ValueError, OSError, KeyError) as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
