"""Quality against data, per sampler and budget, on both shipped models (MNIST and Fashion-MNIST).

Every sampler runs on the same noise and labels (balanced classes) at K = 6, 8, 10, 12, 16, 20 and
50 model calls where it can make K; rules whose cost is their own (FastFlow's default, TeaCache,
TaylorSeer, FlowTurbo) run at their settings and report the calls they made. Columns:

* FD: the Frechet distance, in the features of the dataset's own classifier (not Inception),
  between the samples and the 10,000 test images;
* accuracy: the share the classifier reads as the requested class;
* PSNR against Euler-50 (all samples) and against the exact solution (AB2 with --exact-steps
  steps, on the first --psnr-n samples), from the same noise;
* calls, and wall time: the seconds of the whole measurement, and the median of --rounds
  interleaved timed runs of one --timing-n batch after an untimed warm-up (models/timing.py;
  a speedup above its call-ratio ceiling is flagged, never reported).

FastFlow and the budget choice ("best", fastflow.choice) calibrate on --calibration-samples
other noise first. Euler-10, Euler-50 and FastFlow's default are run on --seeds noise seeds: the
spread (max - min) of Euler-50's FD over them is the yardstick of every FD difference.

    python benchmarks/quality.py                                  # both models; see docs/results.md for times
    python benchmarks/quality.py --models fashion-mnist --n 2000  # one model, merged into the JSON
    python benchmarks/quality.py --n 300 --budgets 10 50 --quick  # a smoke run
    python benchmarks/quality.py --replot results/quality.json results/quality_mnist_quick.json \
        --plot results/quality_datasets.png                       # one figure from saved runs, no sampling

Writes results/quality.json (one entry per model, merged with what the file holds) and
results/quality.png (FD and accuracy against calls, one panel per dataset).
Time convention: t = 0 is noise, t = 1 is data; images are in [-1, 1].
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from fastflow.choice import BudgetSampler  # noqa: E402
from fastflow.plan import min_calls  # noqa: E402
from fastflow.specs import DEFAULT_MAX_RUN  # noqa: E402
from models.checkpoint import load_model  # noqa: E402
from models.classifier import model_dataset  # noqa: E402
from models.cli import OneLineParser, check_writable, positive_int, run_cli, seed_int  # noqa: E402
from models.evaluation import (DEFAULT_CKPT, DEFAULT_REFINER, ROOT, Judge, balanced_labels, fidelity,  # noqa: E402
                               machine_info, make_noise, run_batched)
from models.sampling import calibrates, write_json  # noqa: E402
from models.timing import Contender, compare, speedup_text  # noqa: E402

FASHION_CKPT = os.path.join(ROOT, "checkpoints", "dit_fashion.pt")
# dataset -> the shipped model and the guidance it is measured at (Fashion: its best, see its card)
MODELS = {"mnist": dict(ckpt=DEFAULT_CKPT, cfg=1.0), "fashion-mnist": dict(ckpt=FASHION_CKPT, cfg=2.0)}
BUDGETS = (6, 8, 10, 12, 16, 20, 50)
SEEDED = ("Euler-{steps}", "Euler-10", "FastFlow default")  # run on every seed: the FD spread
HALVES_FD = {"fashion-mnist": 0.29}  # half vs half of the real data (results/fd_stability.json)


@dataclass
class Config:
    """One sampler of the benchmark: its family (one line of the plot), label and factory."""

    family: str
    label: str
    make: Callable[[], ff.Sampler]


def configurations(budgets, steps: int = 50, refiner=None, quick: bool = False) -> list[Config]:
    """Euler-50 first (the PSNR reference), then every sampler at every budget it can make."""
    cfgs = [Config("Euler", f"Euler-{steps}", lambda: ff.EulerSampler(steps))]
    plan_floor = min_calls(steps, 1, DEFAULT_MAX_RUN)
    for K in budgets:
        if K != steps:
            cfgs.append(Config("Euler", f"Euler-{K}", lambda K=K: ff.EulerSampler(K)))
        cfgs.append(Config("AB2", f"AB2-{K}", lambda K=K: ff.AdamsBashforthSampler(K, order=2)))
        if not quick:
            cfgs.append(Config("UniPC-2", f"UniPC-{K}", lambda K=K: ff.UniPCSampler(K)))
            if K // 2 >= 2:  # 2 (K // 2) - 1 calls: K - 1 for an even K
                cfgs.append(Config("Heun, Euler last step", f"Heun-{K // 2} Euler last step",
                                   lambda K=K: ff.HeunSampler(K // 2, correct_last=False)))
        if plan_floor <= K < steps:
            cfgs.append(Config("FastFlow plan", f"FastFlow plan K={K}", lambda K=K: ff.FastFlowSampler(steps, calls=K)))
        if K < steps and not quick:
            cfgs.append(Config("best at K (fastflow.choice)", f"best K={K}",
                               lambda K=K: ff.make_sampler("best", steps=steps, calls=K)))
    cfgs.append(Config("FastFlow default", "FastFlow default", lambda: ff.FastFlowSampler(steps)))
    if quick:
        return cfgs
    cfgs += [Config("TeaCache", f"TeaCache-{steps} d={d:g}", lambda d=d: ff.TeaCacheSampler(steps, threshold=d))
             for d in (0.1, 0.2, 0.4)]
    cfgs += [Config("TaylorSeer", f"TaylorSeer-{steps} N={k}", lambda k=k: ff.TaylorSeerSampler(steps, interval=k))
             for k in (3, 5, 8)]
    turbo = [(1, 5, 0), (1, 9, 0), (1, 19, 0)] + ([(1, 5, 4), (1, 9, 5)] if refiner is not None else [])
    cfgs += [Config("FlowTurbo", f"FlowTurbo H{a}P{b}R{c}",
                    lambda a=a, b=b, c=c: ff.FlowTurboSampler(heun=a, pseudo=b, refine=c, refiner=refiner))
             for a, b, c in turbo]
    return cfgs


def calibrate(sampler, velocity, shape, labels, args, device) -> None:
    """Calibrate on other noise than the measurement's, as a user would (FastFlow, the choice)."""
    n = args.calibration_samples
    x = make_noise(n, shape, seed=args.seed + 7919).to(device)
    sampler.calibrate(velocity, x, y=labels[torch.arange(n) % len(labels)].to(device), cfg_scale=args.cfg)


def measure_model(dataset: str, args, device, progress: bool) -> dict:
    """Every configuration on one model: its rows, the seed spread, timings and verdicts."""
    spec = MODELS[dataset]
    model, config, meta = load_model(spec["ckpt"], device=device, kind="image")
    if model_dataset(meta) != dataset:
        raise ValueError(f"{spec['ckpt']}: a model of {model_dataset(meta)}, listed here for {dataset}")
    velocity = model.eval().forward_with_cfg
    judge = Judge.for_model(meta)
    if args.n < judge.min_fd_samples:
        raise ValueError(f"--n {args.n}: an FD needs more samples than the {judge.min_fd_samples - 1} feature dimensions")
    args.cfg = spec["cfg"]
    shape = (config.in_channels, config.image_size, config.image_size)
    labels = balanced_labels(args.n, config.num_classes)
    refiner = None
    if dataset == "mnist" and os.path.exists(DEFAULT_REFINER):  # the refiner is distilled from the MNIST DiT
        from models.refiner import load_refiner
        refiner = load_refiner(DEFAULT_REFINER, model, device=device)

    def run(sampler, seed):
        x0 = make_noise(args.n, shape, seed)
        return run_batched(sampler, velocity, x0, labels, args.batch_size, device, None, cfg_scale=args.cfg)

    start = time.perf_counter()
    m = min(args.psnr_n, args.n)
    exact = run_batched(ff.AdamsBashforthSampler(args.exact_steps, order=2), velocity,
                        make_noise(args.n, shape, args.seed)[:m], labels[:m], args.batch_size, device,
                        cfg_scale=args.cfg).images
    exact_seconds = time.perf_counter() - start
    rows, samplers, reference = [], {}, None
    cfgs = configurations(args.budgets, args.steps, refiner, args.quick)
    for cfg in tqdm(cfgs, desc=dataset, disable=not progress):
        sampler = cfg.make()
        t = time.perf_counter()
        if calibrates(sampler):
            calibrate(sampler, velocity, shape, labels, args, device)
        calibration_seconds = time.perf_counter() - t if calibrates(sampler) else None
        r = run(sampler, args.seed)
        images = r.images
        row = {"family": cfg.family, "label": cfg.label, "calls": r.nfe, "seconds": r.seconds,
               "calibration_seconds": calibration_seconds, "fd": judge.fid(images),
               "accuracy": judge.accuracy(images, labels),
               "psnr_vs_exact": fidelity(images[:m], exact)[0]}
        if reference is None:
            reference = images  # Euler-50, the first configuration
        else:
            row["psnr_vs_euler50"] = fidelity(images, reference)[0]
        if isinstance(sampler, BudgetSampler):
            row["chosen"] = sampler.choice["name"]
        if cfg.label in [k.format(steps=args.steps) for k in SEEDED]:
            row["fd_seeds"] = {str(args.seed): row["fd"]}
            row["accuracy_seeds"] = {str(args.seed): row["accuracy"]}
            for seed in args.seeds:
                if seed != args.seed:
                    other = run(sampler, seed).images
                    row["fd_seeds"][str(seed)] = judge.fid(other)
                    row["accuracy_seeds"][str(seed)] = judge.accuracy(other, labels)
        rows.append(row)
        samplers[cfg.label] = sampler

    xb = make_noise(args.timing_n, shape, args.seed + 1).to(device)
    yb = labels[:args.timing_n].to(device)
    timing = compare({label: Contender(lambda s: s.sample(velocity, xb, y=yb, cfg_scale=args.cfg).nfe, lambda s=s: s)
                      for label, s in samplers.items()}, f"Euler-{args.steps}", rounds=args.rounds, device=device,
                     progress=lambda it: tqdm(it, desc=f"{dataset} timing rounds", disable=not progress))
    for row in rows:
        t = timing[row["label"]]
        row.update(batch_seconds=t.seconds, seconds_per_call=t.seconds_per_call, speedup=t.speedup,
                   measured_speedup=t.measured_speedup, speedup_ceiling=t.ceiling)
    out = {"model": os.path.relpath(spec["ckpt"], ROOT), "cfg": args.cfg, "n": args.n, "psnr_n": m,
           "steps": args.steps, "exact": f"AB2-{args.exact_steps}", "exact_seconds": exact_seconds,
           "seeds": sorted({args.seed, *args.seeds}), "timing_n": args.timing_n, "rows": rows,
           "timing": timing.as_dict(), "timing_notes": timing.notes(), "seconds": time.perf_counter() - start}
    out["verdicts"] = verdicts(out, dataset)
    return out


def spread(row: dict) -> float:
    """max - min of a row's FD over the noise seeds."""
    fds = list(row["fd_seeds"].values())
    return max(fds) - min(fds)


def mean_fd(row: dict) -> float:
    fds = list(row["fd_seeds"].values())
    return sum(fds) / len(fds)


def verdicts(out: dict, dataset: str) -> dict:
    """The issue's targets on the measured rows (None where the run cannot judge one)."""
    rows = {r["label"]: r for r in out["rows"]}
    e50, e10, ffd = (rows.get(k.format(steps=out["steps"])) for k in SEEDED)
    v = {"seeds": len(out["seeds"])}
    if e50 is None:
        return v
    v.update(euler50_fd=mean_fd(e50) if "fd_seeds" in e50 else e50["fd"], euler50_accuracy=e50["accuracy"])
    if dataset in HALVES_FD:
        v["halves_fd"] = HALVES_FD[dataset]
        v["fd_within_3x_halves"] = v["euler50_fd"] <= 3 * HALVES_FD[dataset]
    v["accuracy_at_least_75"] = e50["accuracy"] >= 0.75
    if len(out["seeds"]) < 2 or "fd_seeds" not in e50:
        return v
    s = spread(e50)
    v["euler50_fd_spread"] = s
    if e10 is not None:
        v["euler10_minus_euler50_fd"] = mean_fd(e10) - mean_fd(e50)
        v["euler10_gap_above_spread"] = abs(v["euler10_minus_euler50_fd"]) > s
    if ffd is not None:
        v["fastflow_default_calls"] = ffd["calls"]
        v["fastflow_default_minus_euler50_fd"] = mean_fd(ffd) - mean_fd(e50)
        v["fastflow_default_within_spread"] = abs(v["fastflow_default_minus_euler50_fd"]) <= s
        v["fastflow_default_3x_fewer_calls"] = 3 * ffd["calls"] <= e50["calls"]
    return v


def best_per_budget(rows: list[dict], budgets) -> dict:
    """K -> the label with the lowest FD among the rows making at most K calls, where any does."""
    out = {}
    for K in sorted(budgets):
        pick = [r for r in rows if r["calls"] <= K]
        if pick:
            out[str(K)] = min(pick, key=lambda r: r["fd"])["label"]
    return out


def main(args) -> dict:
    if args.replot:
        return replot(args.replot, args.plot)
    with torch.no_grad():  # scoped: a caller's autograd state is left as it was
        return measure(args)


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    for flag in ("out_json", "plot"):
        check_writable(getattr(args, flag), "--" + flag.replace("_", "-"))
    out = {"models": {}}
    if os.path.exists(args.out_json):  # merge: each model's entry is replaced, the others kept
        with open(args.out_json) as f:
            out = json.load(f)
    out["machine"] = machine_info(device)
    for dataset in args.models:
        result = measure_model(dataset, args, device, not args.quiet)
        result["best_per_budget"] = best_per_budget(result["rows"], args.budgets)
        out["models"][dataset] = result
        write_json(out, args.out_json)
        if not args.quiet:
            print_table(dataset, result)
    plot(out, args.plot)
    if not args.quiet:
        print(f"wrote {args.out_json} and {args.plot}")
    return out


def replot(paths: list, plot_path: str) -> dict:
    """Plot the models of several saved runs side by side, one panel per dataset; a dataset held by
    two files is refused, since the figure would show only one of them."""
    check_writable(plot_path, "--plot")
    if any(os.path.abspath(plot_path) == os.path.abspath(p) for p in paths):
        raise ValueError(f"--plot {plot_path} is one of the --replot files: it would be overwritten by the figure")
    out = {"models": {}}
    for path in paths:
        try:
            with open(path) as f:
                models = json.load(f)["models"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--replot {path}: not a results file of this benchmark ({e})") from None
        for name, res in models.items():
            if name in out["models"]:
                raise ValueError(f"--replot: {name} is in more than one file ({path} and an earlier one)")
            out["models"][name] = res
    plot(out, plot_path)
    return out


def print_table(dataset: str, res: dict) -> None:
    print(f"\n{dataset}: {res['model']}, guidance {res['cfg']:g}, {res['n']} samples "
          f"(PSNR vs exact on {res['psnr_n']}), {res['seconds'] / 60:.1f} min")
    print(f"{'sampler':<34}{'calls':>6}{'FD':>7}{'acc':>7}{'dB E50':>8}{'dB exact':>9}{'s/batch':>9}{'speedup':>14}")
    for r in res["rows"]:
        e50 = r.get("psnr_vs_euler50")
        print(f"{r['label']:<34}{r['calls']:>6.1f}{r['fd']:>7.2f}{r['accuracy']:>7.1%}"
              f"{'-' if e50 is None else format(e50, '.1f'):>8}{r['psnr_vs_exact']:>9.1f}{r['batch_seconds']:>9.3f}"
              f"{speedup_text(r['measured_speedup'], r['speedup_ceiling']):>14}")
    for line in res["timing_notes"]:
        print(line)
    print("verdicts:", json.dumps(res["verdicts"]))
    print("lowest FD per budget:", json.dumps(res["best_per_budget"]))


def plot(out: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(out["models"])
    # one colour per sampler family across every panel
    colour = {f: f"C{i % 10}" for i, f in enumerate(dict.fromkeys(
        r["family"] for name in names for r in out["models"][name]["rows"]))}
    fig, ax = plt.subplots(2, len(names), figsize=(7.5 * len(names), 9), squeeze=False)
    for j, name in enumerate(names):
        res = out["models"][name]
        for fam in dict.fromkeys(r["family"] for r in res["rows"]):
            rows = sorted((r for r in res["rows"] if r["family"] == fam), key=lambda r: r["calls"])
            style = "-o" if len(rows) > 1 else "*"
            kw = dict(color=colour[fam], label=fam, markersize=6 if len(rows) > 1 else 12)
            ax[0, j].plot([r["calls"] for r in rows], [r["fd"] for r in rows], style, **kw)
            ax[1, j].plot([r["calls"] for r in rows], [100 * r["accuracy"] for r in rows], style, **kw)
        e50 = next((r for r in res["rows"] if r["label"] == f"Euler-{res['steps']}"), None)
        if e50 is not None and "fd_seeds" in e50:
            fds = list(e50["fd_seeds"].values())
            ax[0, j].axhspan(min(fds), max(fds), color="grey", alpha=0.25,
                             label=f"Euler-{res['steps']} over {len(fds)} seeds")
        ax[0, j].set(xscale="log", xlabel="model calls", ylabel="FD to the test set (classifier features)",
                     title=f"{name}: {res['n']} samples, guidance {res['cfg']:g}")
        ax[1, j].set(xscale="log", xlabel="model calls", ylabel="read as the requested class (%)")
        for a in ax[:, j]:
            a.grid(alpha=0.3, which="both")
        ax[0, j].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = OneLineParser(prog="benchmarks/quality.py", description=__doc__)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="datasets to measure")
    p.add_argument("--n", type=positive_int, default=2000, help="samples per sampler (FD: see results/fd_stability.json)")
    p.add_argument("--psnr-n", type=positive_int, default=500, help="samples the exact solution is computed for")
    p.add_argument("--budgets", type=positive_int, nargs="+", default=list(BUDGETS), help="model calls K")
    p.add_argument("--steps", type=positive_int, default=50, help="T of the reference Euler run and of FastFlow's grid")
    p.add_argument("--exact-steps", type=positive_int, default=200, help="AB2 steps of the exact solution")
    p.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2], help="noise seeds of the seeded rows")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed of every other row")
    p.add_argument("--calibration-samples", type=positive_int, default=64, help="other noise FastFlow calibrates on")
    p.add_argument("--batch-size", type=positive_int, default=250, help="samples per model call")
    p.add_argument("--timing-n", type=positive_int, default=50, help="samples of the timed batch")
    p.add_argument("--rounds", type=positive_int, default=3, help="interleaved timed rounds")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads")
    p.add_argument("--quick", action="store_true", help="Euler, AB2, the plan and the default only (smoke run)")
    p.add_argument("--out-json", default="results/quality.json")
    p.add_argument("--plot", default="results/quality.png")
    p.add_argument("--replot", nargs="+", metavar="JSON", help="only plot these saved runs together into --plot")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.steps not in args.budgets:
        p.error(f"--budgets must include --steps ({args.steps}): Euler-{args.steps} is the reference")
    return args


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "benchmarks/quality.py"))
