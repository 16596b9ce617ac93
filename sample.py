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

import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

import fastflow as ff
from fastflow.atomic import atomic_write
from fastflow.metrics import classifier_accuracy
from models.cli import check_writable, resolve_device, run_cli
from models.evaluation import DEFAULT_CLASSIFIER, balanced_labels, fidelity, machine_info, make_noise, run_batched
from models.sampling import (build_parser, build_sampler, grid_image, load_for_sampling, parse_checked, state_tag,
                             warm_up_bandit, write_json, write_png)


def side_by_side(left: torch.Tensor, right: torch.Tensor, nrow: int) -> torch.Tensor:
    """Two image grids next to each other, separated by a blank column."""
    grids = [grid_image(im, nrow) for im in (left, right)]
    gap = torch.ones(grids[0].shape[0], grids[0].shape[1], 8)
    return torch.cat([grids[0], gap, grids[1]], dim=2)


def write_npz(images: torch.Tensor, labels: torch.Tensor, path: str) -> None:
    """uint8 N x H x W x C images and their labels, at exactly ``path`` (no suffix added)."""
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    atomic_write(path, lambda f: np.savez(f, images=u8, labels=labels.numpy()))


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

    model, config, refiner = load_for_sampling(args, device)
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


def parse_args(argv=None):
    return parse_checked(build_parser("sample.py", __doc__), argv)


def cli(argv=None) -> int:
    """Run sample.py; bad input ends with a one-line error and exit status 1 (2 for bad flags)."""
    return run_cli(main, parse_args(argv), "sample.py")


if __name__ == "__main__":
    sys.exit(cli())
