"""Sample digits from a trained DiT with any sampler of `fastflow`.

With no arguments (the main job): Euler-50 and FastFlow from identical noise and labels,
both grids side by side in one labelled PNG (outputs/euler_vs_fastflow.png), and a table of
NFE, wall time, time per model call, speedup and its call-ratio ceiling, PSNR/SSIM against
Euler-50 and classifier accuracy. Times are medians of interleaved rounds on the first
--timing-samples samples, after an untimed warm-up run of each sampler, and a speedup is the
median of the per-round ratios (models/timing.py); a speedup above 1.05 x its ceiling (Euler's
calls / the sampler's calls) is flagged as a measurement problem, not printed. FastFlow's
calibration is timed apart: it is paid once per model and setting.

    python sample.py                                   # Euler-50 vs FastFlow, 100 digits
    python sample.py --sampler heun --steps 10 --n 64 --cfg 2 --out-npz s.npz
    python sample.py --sampler fastflow --calls 14 --order 2          # the optimal plan for 14 model calls
    python sample.py --sampler fastflow --policy bandit --bandit-state state.json --report-json r.json
    python sample.py --ckpt checkpoints/video_dit.pt --n 16 --out clips.gif    # a video model: clips

A video checkpoint (``models.video_dit.VideoDiT``) gives clips (N, F, C, H, W) with every sampler
but FlowTurbo's refiner blocks (the refiner is an image model): --out is an animated GIF (.gif,
the clips tiled) or one row of frames per clip (.png), --out-npz holds uint8 N x F x H x W x C.
PSNR and SSIM are means over frames, accuracy is per frame (the digit classifier on a crop around
each frame's centroid), and a motion column gives the RMS residual in pixels of each clip's
centroid track against constant velocity with bounces (models/video_eval.py).

Time convention: t = 0 is noise, t = 1 is data; samples are images (or clips) in [-1, 1].
"""
from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

import fastflow as ff
from fastflow.atomic import atomic_write
from fastflow.metrics import classifier_accuracy
from models.cli import check_writable, nonnegative_int, positive_int, resolve_device, run_cli
from models.evaluation import balanced_labels, fidelity, index_noise, machine_info, run_batched, sync
from models.sampling import (build_parser, build_sampler, calibrates, grid_image, is_video, load_for_sampling,
                             parse_checked, sample_shape, state_tag, warm_up_bandit, write_json, write_png)
from models.video_io import grid_frames, strip_image, video_format, write_gif
from models.timing import CEILING_SLACK, Comparison, Contender, compare, speedup_text

LABEL_HEIGHT = 18  # pixels of the title strip above each half of the side-by-side PNG


def title_strip(text: str, width: int, channels: int) -> torch.Tensor:
    """(channels, LABEL_HEIGHT, width) in [0, 1]: ``text`` in black, centred on white."""
    from PIL import Image, ImageDraw, ImageFont
    try:
        font = ImageFont.load_default(size=LABEL_HEIGHT - 5)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    strip = Image.new("L", (width, LABEL_HEIGHT), 255)
    draw = ImageDraw.Draw(strip)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((width - (right - left)) // 2 - left, (LABEL_HEIGHT - (bottom - top)) // 2 - top), text, fill=0,
              font=font)
    pixels = torch.frombuffer(bytearray(strip.tobytes()), dtype=torch.uint8).reshape(LABEL_HEIGHT, width)
    return (pixels.float() / 255).expand(channels, -1, -1)


def side_by_side(left: torch.Tensor, right: torch.Tensor, nrow: int,
                 titles: tuple[str, str] = ("Euler", "FastFlow")) -> torch.Tensor:
    """Two image grids next to each other, separated by a blank column, each under its title."""
    grids = [grid_image(im, nrow) for im in (left, right)]
    grids = [torch.cat([title_strip(text, g.shape[2], g.shape[0]), g], dim=1) for text, g in zip(titles, grids)]
    gap = torch.ones(grids[0].shape[0], grids[0].shape[1], 8)
    return torch.cat([grids[0], gap, grids[1]], dim=2)


def write_npz(images: torch.Tensor, labels: torch.Tensor, path: str) -> None:
    """uint8 N x H x W x C images (clips: N x F x H x W x C) and their labels, at exactly ``path``
    (no suffix added)."""
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).numpy()
    atomic_write(path, lambda f: np.savez(f, arr_0=u8, arr_1=labels.numpy(), images=u8, labels=labels.numpy()))


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
    outputs = {"--out": args.out or ("outputs/euler_vs_fastflow.png" if args.sampler is None
                                     else f"outputs/samples_{args.sampler}.png")}
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
    if is_video(config):
        video_format(outputs["--out"])
    samplers = {name: build_sampler(name, args, refiner) for name in names}
    for sampler in samplers.values():
        if calibrates(sampler) and args.bandit_state and os.path.exists(args.bandit_state):
            sampler.load_state(args.bandit_state, tag=state_tag(args))

    from models.checkpoint import load_checkpoint
    from models.classifier import check_judge, default_judge_files, load_classifier, model_dataset
    meta = load_checkpoint(args.ckpt, required=())  # its "data" names the dataset the judge must match
    files = default_judge_files(model_dataset(meta))
    default = files[0] if files else None
    classifier = None
    if args.classifier is not None or (default is not None and os.path.exists(default)):
        classifier = load_classifier(args.classifier or default)
        check_judge(classifier, meta)
    elif not args.quiet:
        where = f"at {default}" if default else f"judges {model_dataset(meta)} samples"
        print(f"no classifier {where}: accuracy is not reported (pass --classifier)")
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
    """The run, with ``--threads`` CPU threads (torch's own count restored after it)."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return sample_and_time(args)
    finally:
        torch.set_num_threads(threads)


def sample_and_time(args) -> dict:
    setup = prepare(args)
    model, config, device = setup.model, setup.config, setup.device
    shape = sample_shape(config)  # (C, H, W), or (F, C, H, W) for a video model
    labels = balanced_labels(args.n, config.num_classes, args.cls)
    x0 = index_noise(range(args.n), shape, args.seed)  # sample i's noise, as sample_ddp.py draws it
    velocity = model.forward_with_cfg
    with torch.no_grad():  # warm the model up so that timings exclude first-call costs
        velocity(x=x0[:2].to(device), t=torch.zeros(2, device=device), y=labels[:2].to(device), cfg_scale=args.cfg)
    progress = (lambda it: tqdm(it, desc="batches", leave=False)) if not args.quiet else None

    runs, snapshots, calibration = {}, {}, {}
    for name, sampler in setup.samplers.items():
        uncalibrated = getattr(sampler, "calibrated", True) is False
        sync(device)
        start = time.perf_counter()
        if calibrates(sampler):
            warm = balanced_labels(args.warmup_batch_size, config.num_classes, args.cls)  # as sample_ddp.py's
            warm_up_bandit(sampler, velocity, shape, warm, args, device)
        sync(device)
        if uncalibrated:
            calibration[name] = time.perf_counter() - start
        snapshots[name] = copy.deepcopy(sampler)  # every timed run replays the state the images came from
        runs[name] = run_batched(sampler, velocity, x0, labels, args.batch_size, device, progress, cfg_scale=args.cfg)
    timed = min(args.timing_samples, args.n)
    comparison = time_samplers(snapshots, velocity, x0[:timed], labels[:timed], args, device)

    rows = []
    base = runs.get("euler")
    for name, run in runs.items():
        sampler = setup.samplers[name]
        t = comparison[name]
        row = {"sampler": name, "steps": sampler.steps, "nfe": run.nfe, "seconds": t.seconds,
               "seconds_per_call": t.seconds_per_call, "timed_runs": t.runs, "speedup": t.speedup,
               "measured_speedup": t.measured_speedup, "speedup_ceiling": t.ceiling}
        if name in calibration:
            row["calibration_seconds"] = calibration[name]
        if base is not None:
            if run is not base:
                row["psnr_vs_euler"], row["ssim_vs_euler"] = fidelity(*frames(run.images, base.images))
        if setup.classifier is not None:
            row["accuracy"] = accuracy(setup.classifier, run.images, labels)
        if is_video(config):
            row["motion_residual"] = motion(run.images, config)
        if isinstance(sampler, ff.choice.BudgetSampler):  # what the replays chose, and what it cost
            row.update(choice=sampler.choice["name"], calls_target=sampler.choice["calls"],
                       choice_deviation=sampler.choice["deviation"],
                       calibration_calls=sampler.choice["calibration_calls"],
                       grid_tuning_replays=(sampler.choice.get("refined") or {}).get("replays", 0))
        elif calibrates(sampler):
            row.update(policy=sampler.policy_name, calls_target=sampler.calls_target, mu=sampler.mu)
        if "refiner_calls" in run.results[0].info:  # FlowTurbo
            row["turbo"] = run.results[0].info["config"]
            row["refiner_calls"] = sum(r.info["refiner_calls"] for r in run.results) / len(run.results)
        rows.append(row)
    print_table(rows)
    choices = {r["sampler"]: r for r in rows if "choice" in r}
    for line in timing_notes(comparison, timed, calibration, args, is_video(config), choices):
        print(line)

    last = list(runs)[-1]
    titles = None if args.sampler is not None else (
        f"Euler-{args.steps}, {runs['euler'].nfe:g} calls", f"FastFlow, {runs['fastflow'].nfe:g} calls")
    picture = make_picture([run.images for run in runs.values()], titles, setup.outputs["--out"], config)
    report = {**rows[-1], "n": args.n, "seed": args.seed, "cfg": args.cfg, "batch_size": args.batch_size,
              "rows": rows, "timing": {**comparison.as_dict(), "samples_per_round": timed},
              "machine": machine_info(device)}
    out = setup.outputs
    writers = {"--out": (out["--out"], lambda: picture(out["--out"]))}
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


def frames(*batches: torch.Tensor) -> list[torch.Tensor]:
    """Clips (N, F, C, H, W) as their N F frames (N F, C, H, W); images unchanged."""
    return [b.flatten(0, 1) if b.dim() == 5 else b for b in batches]


def accuracy(classifier, samples: torch.Tensor, labels: torch.Tensor) -> float:
    """The classifier's accuracy on images, or per frame on clips (a crop around each frame's
    centroid, ``models.video_eval.per_frame_accuracy``): never on a whole clip."""
    if samples.dim() == 5:
        from models.video_eval import per_frame_accuracy
        return per_frame_accuracy(classifier, samples, labels)
    return classifier_accuracy(classifier, samples, labels)


def motion(clips: torch.Tensor, config) -> float | None:
    """Mean over clips of the centroid track's RMS residual (pixels) against constant velocity with
    bounces (``models.video_eval.motion_residual``); None for clips of two digits."""
    from models.video_eval import centroids, digit_room, motion_residual
    room = digit_room(config.image_size)
    return None if room is None else motion_residual(centroids(clips), room).mean().item()


def make_picture(samples: list[torch.Tensor], titles, path: str, config):
    """A writer ``write(path)`` of --out: the image grid (or, with ``titles``, the two runs side by
    side under them); a video model's clips as a GIF (.gif, every frame of every clip tiled) or
    as strips (.png, a row of frames per clip)."""
    nrow = min(10, samples[-1].shape[0])
    if not is_video(config):
        grid = side_by_side(*samples, nrow, titles) if titles else grid_image(samples[-1], nrow)
        return lambda p: write_png(grid, p)
    if video_format(path) == ".png":
        strips = side_by_side(*frames(*samples), config.frames, titles) if titles else strip_image(samples[-1])
        return lambda p: write_png(strips, p)
    movie = (torch.stack([side_by_side(*(s[:, f] for s in samples), nrow, titles) for f in range(config.frames)])
             if titles else grid_frames(samples[-1], nrow))
    return lambda p: write_gif(movie, p)


def time_samplers(snapshots: dict, velocity, x0: torch.Tensor, labels: torch.Tensor, args, device) -> Comparison:
    """Every sampler on one batch of ``x0``: an untimed warm-up run each, then ``--timing-rounds``
    interleaved rounds; each run starts from a fresh copy of its snapshot (made untimed), so a
    learning policy replays the same decisions every round."""
    xb, yb = x0.to(device), labels.to(device)

    def contender(snapshot):
        return Contender(lambda s: s.sample(velocity, xb, y=yb, cfg_scale=args.cfg).nfe,
                         lambda: copy.deepcopy(snapshot))
    progress = None if args.quiet else (lambda it: tqdm(it, desc="timing rounds", leave=False))
    return compare({name: contender(s) for name, s in snapshots.items()},
                   "euler" if "euler" in snapshots else None, rounds=args.timing_rounds, device=device,
                   progress=progress)


def timing_notes(comparison: Comparison, samples: int, calibration: dict, args, video: bool = False,
                 choices: dict | None = None) -> list[str]:
    """The lines printed under the table: how it was timed, any measurement problem, calibration
    (``choices``: the budget choice's table rows, by sampler name), and for clips (``video``) what
    the quality columns measure."""
    lines = [f"{comparison.method()}; {samples} samples per round, {torch.get_num_threads()} CPU thread(s)"]
    if comparison.reference is not None and len(comparison.timings) > 1:
        lines.append(f"ceiling: Euler's calls / the sampler's calls, the most it can gain at equal cost per call; "
                     f"a speedup above {CEILING_SLACK} x ceiling is a measurement problem, not a result")
    lines += comparison.notes()
    if video:
        lines.append("clips: PSNR and SSIM are means over frames, acc is per frame (a crop around each frame's "
                     "centroid), motion the RMS residual in px of the centroid track against constant velocity "
                     "with bounces (models/video_eval.py)")
    for name, seconds in calibration.items():
        row = (choices or {}).get(name)
        if row is not None:  # the budget choice: its reference run, plan calibrations and replays
            lines.append(f"calibration of {name}: {seconds:.2f} s, {row['calibration_calls']} model calls on "
                         f"{args.warmup_batch_size} samples of other noise (reference run, plan calibrations, one "
                         f"replay per candidate, {row['grid_tuning_replays']} replays tuning the grid); chose "
                         f"{row['choice']}: paid once per model and setting")
            continue
        lines.append(f"calibration of {name}: {seconds:.2f} s (a full {args.steps}-step run on {args.warmup_batch_size} "
                     f"samples of other noise, and a learning policy's warm-up batches): paid once per model and "
                     f"setting, not in the times above; --bandit-state saves it")
    return lines


def print_table(rows: list[dict]) -> None:
    def fmt(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    def speed(r, key):
        if key == "speedup":
            return speedup_text(r["measured_speedup"], r["speedup_ceiling"])
        return "-" if r[key] is None else f"{r[key]:.2f}x"
    video = any("motion_residual" in r for r in rows)  # clips: a motion column (pixels)
    print(f"{'sampler':10s} {'NFE':>6s} {'s/round':>8s} {'ms/call':>8s} {'speedup':>13s} {'ceiling':>8s} "
          f"{'PSNR dB':>8s} {'SSIM':>6s} {'acc':>6s}" + (f" {'motion':>7s}" if video else ""))
    for r in rows:
        print(f"{r['sampler']:10s} {r['nfe']:6.1f} {r['seconds']:8.3f} {1e3 * r['seconds_per_call']:8.1f} "
              f"{speed(r, 'speedup'):>13s} {speed(r, 'speedup_ceiling'):>8s} {fmt(r.get('psnr_vs_euler'), '8.2f'):>8s} "
              f"{fmt(r.get('ssim_vs_euler'), '6.4f'):>6s} {fmt(r.get('accuracy'), '6.3f'):>6s}"
              + (f" {fmt(r.get('motion_residual'), '7.3f'):>7s}" if video else ""))


def add_timing_flags(p) -> None:
    g = p.add_argument_group("timing (models/timing.py)")
    g.add_argument("--timing-rounds", type=positive_int, default=9,
                   help="interleaved timed rounds, median reported (fewer than 3 are labelled unrepeated)")
    g.add_argument("--timing-samples", type=positive_int, default=10,
                   help="samples per timed run: the first ones of --n, in one batch")
    g.add_argument("--threads", type=nonnegative_int, default=1,
                   help="torch CPU threads for the whole run (0: torch's default). One thread keeps the times "
                        "steady on a shared machine: with two threads and other jobs running, single model calls "
                        "here varied 60 ms to 1.7 s, with one 50 to 130 ms")


def parse_args(argv=None):
    p = build_parser("sample.py", __doc__)
    add_timing_flags(p)
    return parse_checked(p, argv)


def cli(argv=None) -> int:
    """Run sample.py; bad input ends with a one-line error and exit status 1 (2 for bad flags)."""
    return run_cli(main, parse_args(argv), "sample.py")


if __name__ == "__main__":
    sys.exit(cli())
