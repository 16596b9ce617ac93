"""Every sampler on the same noise and labels: quality against cost.

Writes results/bench.json and results/pareto.png and prints a table. For each sampler:
NFE (model calls per batch), wall time of one batch (models/timing.py: an untimed warm-up
run of every sampler, then the median of --repeats interleaved rounds), time per model call,
the speedup over Euler-50 and its call-ratio ceiling (50 / NFE; a speedup above 1.05 x the
ceiling is flagged as a measurement problem, not reported), the share of the time spent
outside the model (sampler overhead), PSNR and SSIM against Euler-50 from the same noise and labels,
classifier accuracy, and the FID-style Frechet distance to the 10k real digits in the
feature space of the project's digit classifier (not Inception FID).

FastFlow is measured as it would be used: its bandit is first warmed up on --warmup
batches of other noise (its state persisting), then measured on the evaluation noise.
A learning policy keeps learning from batch to batch of that measurement, so its timed runs
replay the measurement's first batch from the state it started from (a copy taken after the
warm-up): the calls and decisions that are timed are the ones whose quality is reported, and
the NFE column counts that batch (``nfe_all_batches`` in the JSON is the mean over all of them).

The targets (FastFlow 2.6x faster than Euler-50 at 30 dB and at most 1 accuracy point lost;
better than Euler at equal calls) are judged only on at least VERDICT_MIN_SAMPLES samples and
repeated timings; a smaller run says so instead of giving a verdict.

    python benchmarks/bench.py                       # full run (minutes on 2 CPU cores)
    python benchmarks/bench.py --n 8 --batch-size 8 --repeats 1 --warmup 1 --quick   # smoke (make bench-smoke)
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from fastflow.atomic import atomic_write  # noqa: E402
from models.cli import (OneLineParser, check_writable, finite_float, nonnegative_float, nonnegative_int,  # noqa: E402
                        positive_int, resolve_device, run_cli, seed_int)
from models.sampling import calibrate_and_warm_up, calibrates, parse_checked  # noqa: E402
from models.evaluation import (DEFAULT_CKPT, DEFAULT_CLASSIFIER, DEFAULT_FEATURE_STATS, DEFAULT_REFINER,  # noqa: E402
                               Judge, balanced_labels, fidelity, machine_info, make_noise, run_batched, sync)
from models.timing import MIN_ROUNDS, Comparison, Contender, compare, speedup_text  # noqa: E402

VERDICT_MIN_SAMPLES = 100  # fewer evaluation samples than this judge no target


class TimedVelocity:
    """Wraps the model and accumulates the seconds spent inside it."""

    def __init__(self, fn, device):
        self.fn, self.device, self.seconds = fn, device, 0.0

    def __call__(self, **kwargs):
        sync(self.device)
        start = time.perf_counter()
        out = self.fn(**kwargs)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return out




@dataclass
class BenchConfig:
    """One sampler of the benchmark: its family (plot colour), label, factory, and for
    FastFlow how many times --warmup batches its bandit learns on before measurement."""

    family: str
    label: str
    make: Callable[[], ff.Sampler]
    warmup_factor: int = 1


def configurations(quick: bool, refiner, mus) -> list[BenchConfig]:
    """Every sampler in the benchmark."""
    cfgs = [BenchConfig("euler", f"Euler-{T}", lambda T=T: ff.EulerSampler(T)) for T in (50, 25, 20, 15, 10)]
    cfgs += [BenchConfig("heun", f"Heun-{T}", lambda T=T: ff.HeunSampler(T)) for T in (25, 10, 5)]
    cfgs += [BenchConfig("heun-euler-last", f"Heun-{T} Euler last step",
                         lambda T=T: ff.HeunSampler(T, correct_last=False)) for T in (25, 13, 10, 8, 5)]
    cfgs += [BenchConfig("ab2", f"AB2-{T}", lambda T=T: ff.AdamsBashforthSampler(T, order=2)) for T in (25, 20, 15, 10)]
    cfgs.append(BenchConfig("static", "Static-50 (every other step)",
                            lambda: ff.ExtrapolatedEulerSampler(50, ff.caching.static_skip_schedule(50))))
    cfgs.append(BenchConfig("fastflow", "FastFlow-50 default (plan, tolerance 1)", lambda: ff.FastFlowSampler(50)))
    for K, order in ((20, 1), (16, 1), (14, 2)):
        cfgs.append(BenchConfig("fastflow", f"FastFlow-50 plan K={K}" + (f" order {order}" if order > 1 else ""),
                                lambda K=K, order=order: ff.FastFlowSampler(50, calls=K, order=order)))
    for K in (20, 16):  # skipping on a second-order base: closer to the exact flow (docs/theory.md section 5)
        cfgs.append(BenchConfig("fastflow-ab2", f"FastFlow-50 plan K={K} AB2 base",
                                lambda K=K: ff.FastFlowSampler(50, calls=K, base="ab2")))
    cfgs.append(BenchConfig("fastflow", "FastFlow-50 planning bandit K=16",
                            lambda: ff.FastFlowSampler(50, calls=16, policy="bandit")))
    cfgs.append(BenchConfig("fastflow", "FastFlow-50 paper config (calibrated mu)", lambda: ff.FastFlowSampler.paper(50)))
    for mu in mus:
        if mu is not None:
            cfgs.append(BenchConfig("fastflow", f"FastFlow-50 paper bandit mu={mu:g}",
                                    lambda mu=mu: ff.FastFlowSampler(50, mu=mu)))
    cfgs.append(BenchConfig("fastflow", "FastFlow-50 paper bandit Thompson", lambda: ff.FastFlowSampler(
        50, policy="paper", bandit="thompson", generator=torch.Generator().manual_seed(0))))
    cfgs += [BenchConfig("teacache", f"TeaCache-50 d={d:g}", lambda d=d: ff.TeaCacheSampler(50, threshold=d))
             for d in (0.05, 0.1, 0.2)]
    cfgs += [BenchConfig("taylorseer", f"TaylorSeer-50 N={k}", lambda k=k: ff.TaylorSeerSampler(50, interval=k))
             for k in (2, 3, 5)]
    turbo = [(1, 9, 0), (1, 19, 0), (2, 8, 0)]
    if refiner is not None:
        turbo += [(1, 5, 4), (1, 9, 5), (2, 8, 6), (1, 3, 6)]
    for a, b, c in turbo:
        cfgs.append(BenchConfig("flowturbo", f"FlowTurbo H{a}P{b}R{c}",
                                lambda a=a, b=b, c=c: ff.FlowTurboSampler(heun=a, pseudo=b, refine=c, refiner=refiner)))
    for a, b, c in ([(1, 9, 0)] + ([(1, 5, 4), (1, 9, 5)] if refiner is not None else [])):
        cfgs.append(BenchConfig("flowturbo-euler-last", f"FlowTurbo H{a}P{b}R{c} Euler last step",
                                lambda a=a, b=b, c=c: ff.FlowTurboSampler(heun=a, pseudo=b, refine=c, refiner=refiner,
                                                                          correct_last=False)))
    if refiner is not None:
        cfgs.append(BenchConfig("flowturbo", "FlowTurbo H1P5R4 published",
                                lambda: ff.FlowTurboSampler(heun=1, pseudo=5, refine=4, refiner=refiner,
                                                            refiner_form="published")))
    if quick:  # the first configuration of each family, plus Euler-50 (the reference)
        seen, keep = set(), []
        for cfg in cfgs:
            if cfg.family not in seen or cfg.label == "Euler-50":
                keep.append(cfg)
                seen.add(cfg.family)
        cfgs = keep
    return cfgs


def measure(cfg: BenchConfig, velocity, x0, labels, args, device, judge, reference, exact=None):
    """Quality of one configuration on the evaluation noise.

    Returns:
        (row, images, for_timing): ``for_timing()`` gives the sampler to time, in the state it
        had when the measurement's first batch started (a fresh copy each call for FastFlow).
    """
    sampler = cfg.make()
    extras = {"cfg_scale": args.cfg}
    if calibrates(sampler):  # calibrate and learn on other noise first, as a user would
        yw = labels[torch.arange(args.warmup_batch_size) % labels.shape[0]].to(device)  # any size fits
        calibrate_and_warm_up(sampler, velocity, lambda i: (make_noise(
            args.warmup_batch_size, tuple(x0.shape[1:]), seed=args.seed + 7919 * (i + 1)).to(device), {"y": yw, **extras}),
            args.warmup * cfg.warmup_factor)
        snapshot = copy.deepcopy(sampler)
        for_timing = lambda: copy.deepcopy(snapshot)  # noqa: E731
    else:
        for_timing = lambda: sampler  # noqa: E731
    timed = TimedVelocity(velocity, device)
    run = run_batched(sampler, timed, x0, labels, args.batch_size, device, None, **extras)
    row = {"family": cfg.family, "label": cfg.label, "sampler": repr(sampler), "nfe": run.results[0].nfe,
           "nfe_all_batches": run.nfe, "overhead_share": max(run.seconds - timed.seconds, 0.0) / run.seconds}
    if "refiner_calls" in run.results[0].info:  # FlowTurbo
        row["refiner_calls"] = sum(r.info["refiner_calls"] for r in run.results) / len(run.results)
    if reference is not None:
        row["psnr"], row["ssim"] = fidelity(run.images, reference)
    if exact is not None:
        row["psnr_vs_exact"] = fidelity(run.images, exact)[0]
    if calibrates(sampler):
        row["mu"] = sampler.mu
        if reference is not None:  # plain Euler with FastFlow's (rounded) NFE, same noise
            same = run_batched(ff.EulerSampler(max(2, round(run.nfe))), velocity, x0, labels, args.batch_size,
                               device, None, **extras)
            row["euler_same_nfe_psnr"] = fidelity(same.images, reference)[0]
    if judge is not None:
        row["accuracy"] = judge.accuracy(run.images, labels)
        row["fid_features"] = judge.fid(run.images) if len(run.images) >= judge.min_fd_samples else None
    return row, run.images, for_timing


def time_interleaved(factories: dict, velocity, xb, yb, args, device, reference: str = "Euler-50") -> Comparison:
    """Wall time of one batch for every sampler (models.timing.compare): an untimed warm-up run
    of each, then ``args.repeats`` interleaved rounds, so that slow drifts of a shared machine hit
    every sampler alike; speedups against ``reference`` are checked against their call ratio.

    Args:
        factories: label -> a callable giving the sampler to time (called outside the timed
            region before every run, so a learning policy replays the same state).
    """
    def contender(factory):
        return Contender(lambda s: s.sample(velocity, xb, y=yb, cfg_scale=args.cfg).nfe, factory)
    return compare({label: contender(f) for label, f in factories.items()},
                   reference if reference in factories else None, rounds=args.repeats, device=device,
                   progress=lambda it: tqdm(it, desc="timing rounds"))


def judged(args, comparison: Comparison) -> str | None:
    """Why this run judges no target (None when it does)."""
    why = [f"{args.n} samples"] if args.n < VERDICT_MIN_SAMPLES else []
    if not comparison.repeated:
        why.append(f"unrepeated timing, {comparison.rounds} round{'s' if comparison.rounds > 1 else ''}")
    return ", ".join(why) or None


def targets(rows: list[dict], not_judged: str | None = None) -> dict:
    """The project's targets, checked on the measured rows; None where not judged (``not_judged``
    says why for the whole run; a speedup above its ceiling is not judged either)."""
    euler50 = next(r for r in rows if r["label"] == "Euler-50")
    out = {}
    for r in rows:
        if r["family"] != "fastflow":
            continue
        speedup = r["speedup"]  # None: above its call-ratio ceiling, a measurement problem
        euler_psnr = r.get("euler_same_nfe_psnr")
        entry = {"speedup": speedup, "speedup_ceiling": r["speedup_ceiling"], "nfe_ratio": euler50["nfe"] / r["nfe"],
                 "psnr": r.get("psnr"), "euler_psnr_at_same_nfe": euler_psnr,
                 "accuracy_drop_points": 100 * (euler50.get("accuracy", 0) - r.get("accuracy", 0)),
                 "not_judged": not_judged or (None if speedup is not None else "speedup above its ceiling")}
        entry["speedup_2.6x_at_30dB_and_1pt"] = None if entry["not_judged"] else bool(
            speedup >= 2.6 and (r.get("psnr") or 0) >= 30 and entry["accuracy_drop_points"] <= 1.0)
        entry["beats_euler_at_equal_nfe"] = None if not_judged else bool(
            r.get("psnr") is not None and euler_psnr is not None and r["psnr"] > euler_psnr)
        out[r["label"]] = entry
    return out


def verdict(label: str, t: dict) -> str:
    """One line per FastFlow row: its numbers, then the verdicts or why there are none."""
    speed = "above its ceiling (not a result)" if t["speedup"] is None else speedup_text(t["speedup"],
                                                                                          t["speedup_ceiling"])
    psnr = "-" if t["psnr"] is None else f"{t['psnr']:.1f} dB"
    same = "-" if t["euler_psnr_at_same_nfe"] is None else f"{t['euler_psnr_at_same_nfe']:.1f}"
    line = (f"{label}: speedup {speed} (ceiling {t['speedup_ceiling']:.2f}x), PSNR {psnr} (Euler at same NFE "
            f"{same}), accuracy drop {t['accuracy_drop_points']:.1f} pt -> ")
    word = {True: "met", False: "MISSED", None: "not judged"}
    line += (f"2.6x target {word[t['speedup_2.6x_at_30dB_and_1pt']]}, "
             f"equal-NFE target {word[t['beats_euler_at_equal_nfe']]}")
    return line + (f" ({t['not_judged']})" if t["not_judged"] else "")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    finite = [r for r in rows if r.get("psnr") is not None]
    with_exact = [r for r in finite if r.get("psnr_vs_exact") is not None]
    fig, axes = plt.subplots(1, 4 if with_exact else 3, figsize=(22 if with_exact else 17, 5))
    families = sorted({r["family"] for r in rows})
    colors = dict(zip(families, plt.cm.tab20.colors))
    panels = [("nfe", "psnr", "model calls (NFE)", "PSNR vs Euler-50 (dB)", finite),
              ("seconds_per_batch", "psnr", "wall time per batch (s)", "PSNR vs Euler-50 (dB)", finite),
              ("nfe", "fid_features", "model calls (NFE)", "FID-style distance (classifier features)",
               [r for r in rows if "fid_features" in r])]
    if with_exact:
        panels.append(("nfe", "psnr_vs_exact", "model calls (NFE)", "PSNR vs the exact solution (dB)", with_exact))
    for ax, (xk, yk, xl, yl, data) in zip(axes, panels):
        for fam in families:
            pts = sorted((r[xk], r[yk]) for r in data if r["family"] == fam)
            if pts:
                ax.plot(*zip(*pts), "o-" if fam in ("euler", "heun", "ab2") else "o", color=colors[fam], label=fam)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    named = {}  # one legend for the figure: every family that appears in any panel
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            named.setdefault(label, handle)
    fig.legend([named[k] for k in sorted(named)], sorted(named), loc="center right", fontsize=8, title="sampler family")
    fig.suptitle("Quality against cost, same noise and labels (higher PSNR, lower distance is better)")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args):
    """Run the benchmark; every input file and output path is checked before the first sample."""
    from models.checkpoint import load_model
    check_writable(args.out_json, "--out-json")
    check_writable(args.out_plot, "--out-plot")
    torch.set_num_threads(args.threads) if args.threads else None
    device = resolve_device(args.device)
    model, config, meta = load_model(args.ckpt, device=device, kind="image")
    refiner = None
    if args.refiner is not None or os.path.exists(DEFAULT_REFINER):  # a refiner asked for must exist
        from models.refiner import load_refiner
        refiner = load_refiner(args.refiner or DEFAULT_REFINER, model, device=device)
    judge = None
    if args.classifier is not None or os.path.exists(DEFAULT_CLASSIFIER):
        judge = Judge(args.classifier or DEFAULT_CLASSIFIER, args.feature_stats, model_meta=meta)
        if args.n < judge.min_fd_samples:
            print(f"--n {args.n}: the feature distance needs at least {judge.min_fd_samples} samples; not reported")
    shape = (config.in_channels, config.image_size, config.image_size)
    x0, labels = make_noise(args.n, shape, args.seed), balanced_labels(args.n, config.num_classes)
    velocity = model.forward_with_cfg
    mus = [None] + args.mu
    rows, factories, reference = [], {}, None
    cfgs = configurations(args.quick, refiner, mus)
    exact = None
    if args.exact_steps:  # a converged solution of the model's ODE from the same noise (see --exact-steps)
        exact = run_batched(ff.HeunSampler(args.exact_steps, correct_last=False), velocity, x0, labels,
                            args.batch_size, device, lambda it: tqdm(it, desc="exact solution"),
                            cfg_scale=args.cfg).images
    for cfg in tqdm(cfgs, desc="samplers"):
        row, images, for_timing = measure(cfg, velocity, x0, labels, args, device, judge, reference, exact)
        if cfg.label == "Euler-50":
            reference = images
            row["psnr"], row["ssim"] = None, 1.0  # the reference itself
        rows.append(row)
        factories[cfg.label] = for_timing
    xb, yb = x0[:args.batch_size].to(device), labels[:args.batch_size].to(device)  # the first batch
    comparison = time_interleaved(factories, velocity, xb, yb, args, device)
    for r in rows:
        t = comparison[r["label"]]
        r.update(seconds_per_batch=t.seconds, timed_runs=t.runs, timed_nfe=t.calls, seconds_per_call=t.seconds_per_call,
                 speedup=t.speedup, measured_speedup=t.measured_speedup, speedup_ceiling=t.ceiling)
    not_judged = judged(args, comparison)
    result = {"machine": machine_info(device), "args": vars(args), "rows": rows,
              "timing": {k: v for k, v in comparison.as_dict().items() if k != "timings"},
              "targets": targets(rows, not_judged)}
    atomic_write(args.out_json, lambda f: json.dump(result, f, indent=1, allow_nan=False), binary=False)
    plot(rows, args.out_plot)
    print_table(rows, result["machine"])
    for line in [comparison.method()] + comparison.notes():
        print(line)
    if not_judged:
        print(f"no verdicts on this run ({not_judged}): the targets are judged on at least {VERDICT_MIN_SAMPLES} "
              f"samples and {MIN_ROUNDS} timed rounds")
    else:
        for label, t in result["targets"].items():
            print(verdict(label, t))
    print(f"wrote {args.out_json} and {args.out_plot}")
    return result


def print_table(rows, machine):
    print(f"machine: {machine}")
    w = max(len(r["label"]) for r in rows)
    print(f"{'sampler':{w}s} {'NFE':>6s} {'s/batch':>8s} {'ms/call':>8s} {'speedup':>13s} {'ceiling':>7s} {'ovh%':>5s} "
          f"{'PSNR':>6s} {'SSIM':>6s} {'exact':>6s} {'acc':>6s} {'FD':>7s}")
    for r in rows:
        f = lambda k, s: format(r[k], s) if isinstance(r.get(k), (int, float)) else "-"  # noqa: E731
        speed = speedup_text(r["measured_speedup"], r["speedup_ceiling"])
        print(f"{r['label']:{w}s} {r['nfe']:6.1f} {r['seconds_per_batch']:8.3f} {1e3 * r['seconds_per_call']:8.1f} "
              f"{speed:>13s} {r['speedup_ceiling']:6.2f}x {100 * r['overhead_share']:5.1f} {f('psnr', '6.2f'):>6s} "
              f"{f('ssim', '6.4f'):>6s} {f('psnr_vs_exact', '6.2f'):>6s} {f('accuracy', '6.3f'):>6s} "
              f"{f('fid_features', '7.2f'):>7s}")


def parse_args(argv=None):
    p = OneLineParser(prog="bench.py", description=__doc__)
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="model checkpoint")
    p.add_argument("--refiner", default=None,
                   help=f"FlowTurbo refiner; without it the R rows are left out (default: {DEFAULT_REFINER} if "
                        "present; a path given here must exist)")
    p.add_argument("--classifier", default=None,
                   help=f"digit classifier for accuracy and the feature distance (default: {DEFAULT_CLASSIFIER} if "
                        "present; a path given here must exist)")
    p.add_argument("--feature-stats", default=DEFAULT_FEATURE_STATS, help="real-data feature statistics")
    p.add_argument("--n", type=positive_int, default=300, help="evaluation samples")
    p.add_argument("--batch-size", type=positive_int, default=100, help="samples per batch; one batch is timed")
    p.add_argument("--cfg", type=finite_float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the evaluation noise")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed rounds (median reported; fewer than 3 are labelled unrepeated and judge no target)")
    p.add_argument("--warmup", type=nonnegative_int, default=20, help="FastFlow warm-up batches on other noise")
    p.add_argument("--warmup-batch-size", type=positive_int, default=25, help="samples per warm-up batch")
    p.add_argument("--mu", type=nonnegative_float, nargs="*", default=[0.01, 0.03],
                   help="paper-bandit mu values (reward per skip, in units of relative velocity error "
                        "||v_hat - v|| / ||v||)")
    p.add_argument("--exact-steps", type=nonnegative_int, default=400,
                   help="steps of the Heun (Euler last step) solution every row is also compared with; 0: none "
                        "(benchmarks/policies.py shows it converged: 200 steps are 3.4e-4 relative L2 from 400)")
    p.add_argument("--threads", type=nonnegative_int, default=1,
                   help="torch CPU threads (0: torch's default); one keeps the times steady on a shared machine")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N or mps")
    p.add_argument("--quick", action="store_true", help="one configuration per family (smoke test)")
    p.add_argument("--out-json", default="results/bench.json", help="all rows, the machine and the targets")
    p.add_argument("--out-plot", default="results/pareto.png", help="quality against calls and time")
    return parse_checked(p, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "bench.py"))
