"""FastFlow on the shipped video DiT (Moving-MNIST-style clips) against Euler and AB2 at equal calls.

All rows start from the same noise and labels (balanced classes) as the reference, Euler-50:

* Euler-K, AB2-K and FastFlow's plan at K calls (``FastFlowSampler(T, calls=K)``), for every K of
  --budgets; FastFlow's default and the paper's per-step bandit at their own settings;
* calls; PSNR against Euler-50 per clip and per frame (does the error grow along the clip?);
* the motion check: the RMS residual (pixels) of each clip's centroid track against the best
  constant-velocity-with-bounces motion, the rule the data were made by (``models/video_eval.py``),
  also for real clips of the test split;
* per-frame accuracy: the project's digit classifier on a crop around each frame's centroid;
* wall time: the median of --rounds interleaved timed runs of one --timing-n batch after a
  warm-up (``models/timing.py``; a speedup above its call ratio T/K is flagged, never printed),
  and the time per call of the video model against the image DiT's at the same batch.

Also: the video model's one-step extrapolation error along t beside the image DiT's (what the
plan sees), and whether a plan calibrated on clips of one class transfers to the others: for each
class c, FastFlow at --transfer-calls calibrated on clips of c only, measured on all clips.

    python benchmarks/video.py                         # 32 clips (46 minutes on 2 CPU cores shared with two other jobs)
    python benchmarks/video.py --n 8 --budgets 12 --transfer-classes 0 1 --rounds 1   # a smoke run

Writes results/video.json and results/video.png.
Time convention: t = 0 is noise, t = 1 is data; clips (N, F, C, H, W) are in [-1, 1].
"""
from __future__ import annotations

import os
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from benchmarks.editing import one_step_errors  # noqa: E402
from models.checkpoint import load_model  # noqa: E402
from models.classifier import check_judge, load_classifier  # noqa: E402
from models.cli import OneLineParser, check_writable, positive_int, run_cli, seed_int  # noqa: E402
from models.data import build_moving_mnist, default_root  # noqa: E402
from models.evaluation import (DEFAULT_CKPT, DEFAULT_CLASSIFIER, PSNR_CAP, ROOT, balanced_labels,  # noqa: E402
                               machine_info, make_noise)
from models.sampling import write_json  # noqa: E402
from models.timing import compare, speedup_text  # noqa: E402
from models.video_eval import centroids, digit_room, motion_residual, per_frame_accuracy, psnr_per_frame  # noqa: E402

VIDEO_CKPT = os.path.join(ROOT, "checkpoints", "video_dit.pt")


def clip_scores(clips: torch.Tensor, labels: torch.Tensor, judge, room) -> dict:
    """Per-frame accuracy and the mean (and per-clip) motion residual of a batch of clips."""
    motion = motion_residual(centroids(clips), room) if room is not None else None
    return {"accuracy": per_frame_accuracy(judge, clips, labels),
            "motion_residual": None if motion is None else motion.mean().item(),
            "motion_per_clip": None if motion is None else motion.tolist()}


def closeness(clips: torch.Tensor, reference: torch.Tensor) -> dict:
    """PSNR against the reference, each frame capped at PSNR_CAP: mean, per clip, per frame index."""
    p = psnr_per_frame(clips, reference).clamp(max=PSNR_CAP)                    # (N, F)
    return {"psnr_vs_euler50": p.mean().item(), "psnr_per_clip": p.mean(1).tolist(),
            "psnr_per_frame": p.mean(0).tolist()}


def per_call_seconds(video_velocity, image_velocity, video_shape, image_shape, n, rounds, calls=5) -> dict:
    """Seconds per model call of the video model and of the image DiT at the same batch of n, timed
    in interleaved rounds of ``calls`` calls each (median over rounds)."""
    xv, xi = make_noise(n, video_shape, 11), make_noise(n, image_shape, 12)
    y, t = torch.arange(n) % 10, torch.full((n,), 0.5)

    def calls_of(velocity, x):
        def run():
            for _ in range(calls):
                velocity(x=x, t=t, y=y, cfg_scale=1.0)
            return calls
        return run
    timing = compare({"video": calls_of(video_velocity, xv), "image": calls_of(image_velocity, xi)},
                     rounds=rounds, device=torch.device("cpu"))
    video, image = timing["video"].seconds_per_call, timing["image"].seconds_per_call
    return {"batch": n, "video_seconds_per_call": video, "image_seconds_per_call": image, "ratio": video / image,
            "notes": timing.notes()}


def main(args) -> dict:
    with torch.no_grad():  # scoped: a caller's autograd state is left as it was
        return measure(args)


def measure(args) -> dict:
    device = torch.device("cpu")
    check_writable(args.out_json, "--out-json")
    check_writable(args.plot, "--plot")
    torch.set_num_threads(args.threads)
    model, config, meta = load_model(args.ckpt, device=device, kind="video")
    judge = load_classifier(DEFAULT_CLASSIFIER)
    check_judge(judge, meta)
    velocity = model.eval().forward_with_cfg
    T, shape, room = args.steps, (config.frames, config.in_channels, config.image_size, config.image_size), \
        digit_room(config.image_size)
    labels = balanced_labels(args.n, config.num_classes)
    x0 = make_noise(args.n, shape, args.seed)
    extras = dict(cfg_scale=args.cfg)
    progress = not args.quiet

    def calibrate(sampler, cal_labels=None):
        m = args.calibration_samples
        y = cal_labels if cal_labels is not None else balanced_labels(m, config.num_classes)
        sampler.calibrate(velocity, make_noise(m, shape, args.seed + 7919), y=y, **extras)
        return sampler

    def run(sampler):
        r = sampler.sample(velocity, x0, y=labels, **extras)
        return r.x.clamp(-1, 1), r.nfe

    samplers = {f"Euler-{T}": ff.EulerSampler(T)}
    for K in args.budgets:
        samplers[f"Euler-{K}"] = ff.EulerSampler(K)
        samplers[f"AB2-{K}"] = ff.AdamsBashforthSampler(K, order=2)
        samplers[f"FastFlow plan K={K}"] = ff.FastFlowSampler(T, calls=K)
    samplers["FastFlow default"] = ff.FastFlowSampler(T)
    samplers["FastFlow paper bandit"] = ff.FastFlowSampler.paper(T, generator=torch.Generator().manual_seed(args.seed))

    out = {"machine": machine_info(device), "ckpt": os.path.relpath(args.ckpt, ROOT), "n": args.n, "steps": T,
           "cfg": args.cfg, "seed": args.seed, "frames": config.frames, "image_size": config.image_size,
           "budgets": args.budgets, "rows": []}
    reference = None
    for name, sampler in tqdm(samplers.items(), desc="samplers", disable=not progress):
        if isinstance(sampler, ff.FastFlowSampler):
            calibrate(sampler)
        clips, calls = run(sampler)
        row = {"sampler": name, "calls": calls, **clip_scores(clips, labels, judge, room)}
        if reference is None:
            reference = clips
        else:
            row.update(closeness(clips, reference))
        if isinstance(sampler, ff.FastFlowSampler):
            row.update(policy=sampler.policy_name, calls_target=sampler.calls_target, skipped=sorted(sampler.schedule())
                       if sampler.policy_name == "plan" else None)
        out["rows"].append(row)

    if args.data_root != "none":  # the same checks on real clips: what the data themselves give
        data, _ = build_moving_mnist(args.data_root or default_root("moving-mnist"), train=False, download=False,
                                     frames=config.frames, size=config.image_size, clips=args.n)
        real = torch.stack([data[i][0] for i in range(args.n)])
        real_labels = torch.tensor([int(data[i][1]) for i in range(args.n)])
        out["real"] = {"clips": args.n, **clip_scores(real, real_labels, judge, room)}

    # wall time, interleaved, on one batch of --timing-n clips
    xb, yb = x0[:args.timing_n], labels[:args.timing_n]
    timing = compare({name: (lambda s=s: s.sample(velocity, xb, y=yb, **extras).nfe) for name, s in samplers.items()},
                     reference=f"Euler-{T}", rounds=args.rounds, device=device,
                     progress=lambda it: tqdm(it, desc="timing rounds", disable=not progress))
    for row in out["rows"]:
        t = timing[row["sampler"]]
        row.update(seconds=t.seconds, seconds_per_call=t.seconds_per_call, speedup=t.speedup,
                   measured_speedup=t.measured_speedup, speedup_ceiling=t.ceiling)
    out["timing"], out["timing_notes"] = timing.as_dict(), timing.notes()

    # what the plan sees: the video model's one-step errors beside the image DiT's
    image_model, image_config, _ = load_model(args.image_ckpt, device=device, kind="image")
    image_shape = (image_config.in_channels, image_config.image_size, image_config.image_size)
    image_sampler = ff.FastFlowSampler(T)
    image_sampler.calibrate(image_model.eval().forward_with_cfg, make_noise(args.calibration_samples, image_shape,
                                                                           args.seed + 7919),
                            y=balanced_labels(args.calibration_samples, image_config.num_classes), cfg_scale=1.0)
    out["tables"] = {"video": one_step_errors(samplers["FastFlow default"]), "image": one_step_errors(image_sampler)}
    out["per_call"] = per_call_seconds(velocity, image_model.forward_with_cfg, shape, image_shape, args.per_call_batch,
                                       args.rounds)

    # does a plan made on one class carry over to the others?
    K, transfer = args.transfer_calls, []
    everyone = set(samplers[f"FastFlow plan K={K}"].schedule()) if f"FastFlow plan K={K}" in samplers else None
    for c in tqdm(args.transfer_classes, desc="transfer", disable=not progress):
        s = calibrate(ff.FastFlowSampler(T, calls=K), torch.full((args.calibration_samples,), c, dtype=torch.long))
        clips, calls = run(s)
        p = torch.tensor(closeness(clips, reference)["psnr_per_clip"])
        own = labels == c
        skipped = set(s.schedule())
        transfer.append({"class": c, "calls": calls, "psnr_own_class": p[own].mean().item() if own.any() else None,
                         "psnr_other_classes": p[~own].mean().item() if (~own).any() else None,
                         "skipped": sorted(skipped),
                         "jaccard_vs_all_classes": (len(skipped & everyone) / max(1, len(skipped | everyone))
                                                    if everyone is not None else None)})
    out["transfer"] = {"calls": K, "classes": transfer}
    write_json(out, args.out_json)
    plot(out, args.plot)
    if not args.quiet:
        print_table(out)
        print(f"wrote {args.out_json} and {args.plot}")
    return out


def print_table(out: dict) -> None:
    print(f"{'sampler':<24}{'calls':>6}{'PSNR dB':>9}{'first/last frame':>18}{'acc':>7}{'motion px':>10}"
          f"{'s/call':>8}{'speedup':>16}")
    for r in out["rows"]:
        p = r.get("psnr_vs_euler50")
        ends = f"{r['psnr_per_frame'][0]:.1f} / {r['psnr_per_frame'][-1]:.1f}" if p is not None else "-"
        motion = "-" if r["motion_residual"] is None else f"{r['motion_residual']:.2f}"
        print(f"{r['sampler']:<24}{r['calls']:>6.0f}{'-' if p is None else format(p, '.1f'):>9}{ends:>18}"
              f"{r['accuracy']:>7.1%}{motion:>10}{r['seconds_per_call']:>8.3f}"
              f"{speedup_text(r['measured_speedup'], r['speedup_ceiling']):>16}")
    if "real" in out:
        r = out["real"]
        motion = "-" if r["motion_residual"] is None else f"{r['motion_residual']:.2f} px"
        print(f"real clips ({r['clips']}): per-frame accuracy {r['accuracy']:.1%}, motion residual {motion}")
    pc = out["per_call"]
    print(f"per call at batch {pc['batch']}: video {pc['video_seconds_per_call'] * 1e3:.1f} ms, image DiT "
          f"{pc['image_seconds_per_call'] * 1e3:.1f} ms ({pc['ratio']:.1f}x)")
    for c in out["transfer"]["classes"]:
        print(f"plan at K = {out['transfer']['calls']} calibrated on class {c['class']}: "
              f"{c['psnr_own_class'] or float('nan'):.1f} dB on its class, {c['psnr_other_classes'] or float('nan'):.1f} "
              f"dB on the others; skip set overlap with the all-class plan {c['jaccard_vs_all_classes']:.2f}")
    for line in out["timing_notes"] + out["per_call"]["notes"]:
        print(line)


def plot(out: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.4))
    rows = [r for r in out["rows"] if "psnr_vs_euler50" in r]
    for family, style in (("Euler-", "--s"), ("AB2-", "-.^"), ("FastFlow plan", "-o")):
        fam = [r for r in rows if r["sampler"].startswith(family)]
        ax[0].plot([r["calls"] for r in fam], [r["psnr_vs_euler50"] for r in fam], style, label=family.rstrip("-"))
    for r in rows:
        if r["sampler"] in ("FastFlow default", "FastFlow paper bandit"):
            ax[0].plot(r["calls"], r["psnr_vs_euler50"], "*", ms=12, label=r["sampler"])
    ax[0].set(xlabel="model calls per clip", ylabel="PSNR against Euler-50 (dB)", title=f"{out['n']} clips, same noise")
    ax[0].legend(fontsize=8)
    K = max(out["budgets"])
    for r in rows:
        if r["sampler"] in (f"Euler-{K}", f"AB2-{K}", f"FastFlow plan K={K}", "FastFlow default"):
            ax[1].plot(range(1, len(r["psnr_per_frame"]) + 1), r["psnr_per_frame"], "-o", label=r["sampler"])
    ax[1].set(xlabel="frame", ylabel="PSNR against Euler-50 (dB)", title="along the clip")
    ax[1].legend(fontsize=8)
    for name, tab in out["tables"].items():
        ax[2].semilogy(tab["t"], tab["error"], label=f"{name} model")
    ax[2].set(xlabel="t (0 noise, 1 data)", ylabel="one-step extrapolation error (relative)",
              title="where skipping is cheap")
    ax[2].legend(fontsize=8)
    tr = out["transfer"]["classes"]
    xs = range(len(tr))
    ax[3].bar([x - 0.2 for x in xs], [c["psnr_own_class"] or 0 for c in tr], 0.4, label="its own class")
    ax[3].bar([x + 0.2 for x in xs], [c["psnr_other_classes"] or 0 for c in tr], 0.4, label="the other classes")
    plan = next((r for r in rows if r["sampler"] == f"FastFlow plan K={out['transfer']['calls']}"), None)
    if plan is not None:
        ax[3].axhline(plan["psnr_vs_euler50"], color="k", ls="--", lw=1, label="calibrated on all classes")
    ax[3].set_xticks(list(xs), [str(c["class"]) for c in tr])
    ax[3].set(xlabel="class calibrated on", ylabel="PSNR against Euler-50 (dB)",
              title=f"a plan from one class, K = {out['transfer']['calls']}")
    ax[3].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = OneLineParser(prog="benchmarks/video.py", description=__doc__)
    p.add_argument("--ckpt", default=VIDEO_CKPT, help="video model checkpoint")
    p.add_argument("--image-ckpt", default=DEFAULT_CKPT, help="the image DiT the error table and call time are set beside")
    p.add_argument("--data-root", default=None,
                   help="MNIST folder for the real clips (None: ../shared/data/mnist; 'none': skip them)")
    p.add_argument("--n", type=positive_int, default=32, help="clips per sampler")
    p.add_argument("--steps", type=positive_int, default=50, help="T of the reference Euler run and of FastFlow's grid")
    p.add_argument("--budgets", type=positive_int, nargs="+", default=[10, 12, 16, 20], help="K model calls")
    p.add_argument("--cfg", type=float, default=2.0, help="guidance scale (the model card's)")
    p.add_argument("--calibration-samples", type=positive_int, default=8, help="other clips FastFlow calibrates on")
    p.add_argument("--transfer-calls", type=positive_int, default=16, help="K of the class-transfer plans")
    p.add_argument("--transfer-classes", type=int, nargs="+", default=list(range(10)), help="classes calibrated on")
    p.add_argument("--timing-n", type=positive_int, default=8, help="clips of the timed batch")
    p.add_argument("--per-call-batch", type=positive_int, default=32,
                   help="batch at which a video call is timed against an image DiT call")
    p.add_argument("--rounds", type=positive_int, default=3, help="interleaved timed rounds")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed")
    p.add_argument("--out-json", default="results/video.json")
    p.add_argument("--plot", default="results/video.png")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    bad = [c for c in args.transfer_classes if not 0 <= c < 10]
    if bad:
        p.error(f"--transfer-classes: {bad[0]} is not a class of Moving MNIST (0 to 9)")
    if args.transfer_calls not in args.budgets:
        p.error(f"--transfer-calls {args.transfer_calls} must be one of --budgets {args.budgets}: the transfer is "
                f"compared with the all-class plan at that budget")
    return args


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "benchmarks/video.py"))
