"""Skip policies against plain solvers at equal calls, on four models, same noise.

For each model and each budget K of model calls: Euler-K, AB2-K, FastFlow-50 with the static
optimal plan (``policy="plan"``), the paper's per-step bandit meeting K through its Lagrange
multiplier (``policy="paper"``), and the planning bandit (``policy="bandit"``); plus the
static every-other-step schedule, FastFlow's default (tolerance) and the paper's own
configuration (calibrated mu). Every FastFlow sampler is calibrated on other noise and the
bandits then learn on ``--warmup`` further batches before being measured.

Columns: calls; deviation from Euler-50 (PSNR in dB for images, relative L2 for the 2-D
models); error against a converged high-accuracy solution from the same noise (same
units); accuracy and FD for the DiT; batches the bandits needed before their skip sets
stopped changing. Models:

* ``toy``: the Gaussian mixture of ``benchmarks/toy_bandit.py`` (float64; exact: Heun-1000);
* ``dit``: the shipped MNIST DiT, the benchmark's 300 digits (exact: Heun with an Euler last
  step at 400 steps, checked against 200 steps);
* ``dit-fashion``: the shipped Fashion-MNIST DiT at guidance 2, the same 300 samples' noise
  (exact as for ``dit``), judged by the Fashion-MNIST classifier;
* ``peer``: the 2-D checkerboard model trained with the ``flow_matching`` library
  (``benchmarks/peer_model.py``; exact: Heun-1000).

Writes results/policies.json and results/policies.png.

    python benchmarks/policies.py                     # all four models (toy, dit, peer: about 15 minutes on
                                                      # 2 CPU cores; dit-fashion --quick alone: 8 minutes,
                                                      # dit-fashion in full: over an hour on one thread, its
                                                      # exact solutions alone 35 minutes)
    python benchmarks/policies.py --models toy --quick
    python benchmarks/policies.py --models peer --update   # add one model to results/policies.json
"""
from __future__ import annotations

import json
import os
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from models.cli import OneLineParser, check_writable, nonnegative_int, positive_int, run_cli  # noqa: E402
from models.sampling import calibrate_and_warm_up, calibrates  # noqa: E402
from models.timing import speedup_text  # noqa: E402

T = 50


# -- models: velocity, evaluation noise, calibration/warm-up noise, quality measures -------------

class Workload:
    """A model with its evaluation noise, the noise of warm-up batch i, and how to score samples."""

    def __init__(self, name, velocity, x0, extras, warm, score, exact_sampler, check_sampler, batch_size):
        self.name, self.velocity, self.x0, self.extras = name, velocity, x0, extras
        self.warm, self.score, self.batch_size = warm, score, batch_size
        self.exact_sampler, self.check_sampler = exact_sampler, check_sampler

    def run(self, sampler):
        """Sample the evaluation noise in batches; returns (x, mean nfe, results)."""
        xs, results = [], []
        for i in range(0, self.x0.shape[0], self.batch_size):
            extras = {k: (v[i:i + self.batch_size] if torch.is_tensor(v) else v) for k, v in self.extras.items()}
            res = sampler.sample(self.velocity, self.x0[i:i + self.batch_size], **extras)
            xs.append(res.x)
            results.append(res)
        return torch.cat(xs), sum(r.nfe for r in results) / len(results), results


def rel_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


def toy_workload(quick):
    flow = ff.toy.GaussianMixtureFlow([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]], [0.3, 0.2, 0.4])
    n = 1000 if quick else 4000
    x0 = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    warm = lambda i: ({}, torch.randn(256, 2, dtype=torch.float64,  # noqa: E731
                                      generator=torch.Generator().manual_seed(1000 + i)))
    return Workload("toy", flow, x0, {}, warm, lambda x, ref: {"dev": rel_l2(x, ref)},
                    ff.HeunSampler(1000), ff.HeunSampler(500), n)


def peer_workload(quick):
    from benchmarks.peer_model import DEFAULT_PEER, load_peer
    if not os.path.exists(DEFAULT_PEER):
        return None
    model = load_peer(DEFAULT_PEER)
    n = 1000 if quick else 4000
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    warm = lambda i: ({}, torch.randn(256, 2, generator=torch.Generator().manual_seed(1000 + i)))  # noqa: E731
    velocity = lambda x, t: model(x, t)  # noqa: E731
    return Workload("peer", velocity, x0, {}, warm, lambda x, ref: {"dev": rel_l2(x, ref)},
                    ff.HeunSampler(1000), ff.HeunSampler(500), n)


def dit_workload(quick, name="dit"):
    """The shipped MNIST DiT (no guidance) or, as "dit-fashion", the Fashion-MNIST DiT at its best
    guidance (2); each judged by its own dataset's classifier."""
    from models.evaluation import DEFAULT_CKPT, ROOT, Judge, balanced_labels, fidelity, make_noise
    from models.checkpoint import load_model
    ckpt, cfg = (DEFAULT_CKPT, 1.0) if name == "dit" else (os.path.join(ROOT, "checkpoints", "dit_fashion.pt"), 2.0)
    model, config, meta = load_model(ckpt, device=torch.device("cpu"))
    shape = (config.in_channels, config.image_size, config.image_size)
    n = 20 if quick else 300
    x0, labels = make_noise(n, shape, 0), balanced_labels(n, config.num_classes)
    judge = Judge.for_model(meta)

    def warm(i):
        return {"y": balanced_labels(25, 10), "cfg_scale": cfg}, make_noise(25, shape, 12345 + 7919 * i)

    def score(x, ref):
        x = x.clamp(-1, 1)
        return {"dev": fidelity(x, ref.clamp(-1, 1))[0], "accuracy": judge.accuracy(x, labels),
                "fd": judge.fid(x) if len(x) >= judge.min_fd_samples else None}  # --quick's 20 are too few

    steps = 20 if quick else 400
    return Workload(name, model.forward_with_cfg, x0, {"y": labels, "cfg_scale": cfg}, warm, score,
                    ff.HeunSampler(steps, correct_last=False), ff.HeunSampler(steps // 2, correct_last=False),
                    min(n, 100))


# -- the rows ------------------------------------------------------------------------------------

def settle(skips):
    """Batches after which the skip set never changed again (len(skips) if it changed last)."""
    changes = [i for i in range(1, len(skips)) if skips[i] != skips[i - 1]]
    return changes[-1] if changes else 0


def prepared(w, make, warmup):
    """A FastFlow sampler calibrated on warm-up batch 0, then run on batches 1..warmup."""
    s = make()
    results = calibrate_and_warm_up(s, w.velocity, lambda i: w.warm(i)[::-1], warmup + 1 if s.policy_name != "plan" else 1)
    skips = [tuple(r.skipped) for r in results[1:]]
    return s, (settle(skips) if skips else 0)


VARIABLE_AB2 = "AB2, variable step on the plan's grid"


def plan_grid_ab2(fast: ff.FastFlowSampler) -> ff.AdamsBashforthSampler:
    """Variable-step AB2 evaluated only at the plan's real steps: one longer step per run of skips."""
    skip = set(fast.schedule())
    reals = [fast.times[k].item() for k in range(fast.steps) if k not in skip]
    return ff.AdamsBashforthSampler(times=reals + [1.0], order=2)


def configs(budgets, order):
    rows = []
    for K in budgets:
        rows += [("Euler", K, lambda K=K: ff.EulerSampler(K)),
                 ("AB2", K, lambda K=K: ff.AdamsBashforthSampler(K, order=2)),
                 ("FastFlow plan", K, lambda K=K: ff.FastFlowSampler(T, calls=K, order=order)),
                 ("FastFlow planning bandit", K, lambda K=K: ff.FastFlowSampler(T, calls=K, policy="bandit",
                                                                                 order=order)),
                 ("FastFlow paper bandit, budget", K, lambda K=K: ff.FastFlowSampler(T, calls=K, policy="paper")),
                 ("FastFlow plan, AB2 base", K, lambda K=K: ff.FastFlowSampler(T, calls=K, order=order, base="ab2")),
                 (VARIABLE_AB2, K, lambda K=K: ff.FastFlowSampler(T, calls=K, order=order, base="ab2"))]
    rows += [("Static every other step", None, lambda: ff.ExtrapolatedEulerSampler(T, ff.caching.static_skip_schedule(T))),
             ("FastFlow default", None, lambda: ff.FastFlowSampler(T)),
             ("FastFlow paper config", None, lambda: ff.FastFlowSampler.paper(T))]
    return rows


def evaluate(w, args):
    print(f"[{w.name}] reference and exact solutions")
    ref, _, _ = w.run(ff.EulerSampler(T))
    exact, exact_nfe, _ = w.run(w.exact_sampler)
    check, _, _ = w.run(w.check_sampler)
    out = {"model": w.name, "exact": repr(w.exact_sampler), "exact_nfe": exact_nfe,
           "exact_convergence": {"check": repr(w.check_sampler), "rel_l2_check_vs_exact": rel_l2(check, exact)},
           "euler50": {"vs_exact": w.score(ref, exact)}, "rows": []}
    if "accuracy" in out["euler50"]["vs_exact"]:
        out["euler50"].update(w.score(ref, ref))
        out["euler50"]["vs_exact"]["psnr_vs_exact"] = out["euler50"]["vs_exact"]["dev"]
    for label, K, make in tqdm(configs(args.budgets, args.order), desc=w.name):
        sampler = make()
        settled = None
        if calibrates(sampler):
            sampler, settled = prepared(w, make, args.warmup)
            if label == VARIABLE_AB2:
                sampler, settled = plan_grid_ab2(sampler), None
        x, nfe, results = w.run(sampler)
        row = {"label": label, "budget": K, "sampler": repr(sampler), "calls": nfe, **w.score(x, ref),
               "vs_exact": w.score(x, exact)["dev"]}
        if settled is not None and sampler.policy_name != "plan":
            row["batches_to_settle"] = settled
            row["warmup_batches"] = args.warmup
        out["rows"].append(row)
    return out


def timing(args):
    """Wall time per batch of 100 digits on the DiT (models/timing.py: an untimed warm-up run of
    each sampler, then the median of --repeats interleaved rounds; every speedup over Euler-50 is
    checked against its call ratio 50 / calls and is None above 1.05 x that ceiling)."""
    from models.checkpoint import load_model
    from models.evaluation import DEFAULT_CKPT, Judge, balanced_labels, fidelity, make_noise
    from models.timing import compare
    model, config, _ = load_model(DEFAULT_CKPT, device=torch.device("cpu"))
    velocity = model.forward_with_cfg
    shape = (config.in_channels, config.image_size, config.image_size)
    xb, yb = make_noise(100, shape, 0), balanced_labels(100, 10)

    def calibrated(s):  # the calibration run, on other noise, is not timed
        s.calibrate(velocity, make_noise(25, shape, 12345), y=balanced_labels(25, 10), cfg_scale=1.0)
        return s
    samplers = {"Euler-50": ff.EulerSampler(T)}
    for K, order in ((16, 1), (14, 1), (14, 2), (13, 2)):
        s = calibrated(ff.FastFlowSampler(T, calls=K, order=order))
        samplers[f"plan K={K} order {order}"] = s
        samplers[f"plan K={K} order {order} frozen"] = s.freeze()
    samplers["default"] = calibrated(ff.FastFlowSampler(T))
    results = {name: s.sample(velocity, xb, y=yb, cfg_scale=1.0) for name, s in samplers.items()}  # for quality
    comparison = compare({name: (lambda s=s: s.sample(velocity, xb, y=yb, cfg_scale=1.0).nfe)
                          for name, s in samplers.items()}, "Euler-50", rounds=args.repeats,
                         progress=lambda it: tqdm(it, desc="timing rounds"))
    ref = results["Euler-50"].x.clamp(-1, 1)
    judge = Judge()
    out = {name: {**comparison[name].as_dict(),
                  "psnr": fidelity(results[name].x.clamp(-1, 1), ref)[0] if name != "Euler-50" else None,
                  "accuracy": judge.accuracy(results[name].x.clamp(-1, 1), yb)} for name in samplers}
    return out, comparison


def plot(results, path) -> list[str]:
    """Every model's rows against calls, against Euler-50 (top) and the exact solution (bottom),
    written to ``path``; returns the legend's names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    models = [r for r in results["models"]]
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 9.5), squeeze=False)
    # one colour per sampler across all panels, and one legend naming every line of every panel
    every = sorted({r["label"] for m in models for r in m["rows"] if r["budget"] is not None})
    colour = {label: plt.cm.tab10.colors[i % 10] for i, label in enumerate(every)}
    for col, m in enumerate(models):
        image = m["model"].startswith("dit")
        for row, (key, name) in enumerate((("dev", "Euler-50"), ("vs_exact", "exact solution"))):
            ax = axes[row][col]
            labels = sorted({r["label"] for r in m["rows"] if r["budget"] is not None})
            for label in labels:
                pts = sorted((r["calls"], r[key]) for r in m["rows"] if r["label"] == label)
                ax.plot(*zip(*pts), "o-", label=label, color=colour[label], lw=2 if "plan" in label else 1)
            for r in m["rows"]:
                if r["budget"] is None:
                    ax.plot(r["calls"], r[key], "k*" if "default" in r["label"] else "kx", ms=10)
                    ax.annotate(r["label"].replace("FastFlow ", ""), (r["calls"], r[key]), fontsize=7,
                                xytext=(4, 4), textcoords="offset points")
            if key == "vs_exact":
                e50 = m["euler50"]["vs_exact"]["dev"]
                ax.axhline(e50, color="gray", ls="--", lw=1)
                ax.annotate("Euler-50", (ax.get_xlim()[0], e50), fontsize=7, color="gray")
            if not image:
                ax.set_yscale("log")
            ax.set_xlabel("model calls per sample")
            ax.set_ylabel(f"PSNR vs {name} (dB; higher is better)" if image else
                          f"relative L2 to {name} (no unit; lower is better)")
            ax.set_title(f"{m['model']}: against {name}")
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[label], marker="o", lw=2 if "plan" in label else 1) for label in every]
    handles += [Line2D([], [], color="k", marker="*", ms=10, ls=""), Line2D([], [], color="k", marker="x", ms=8, ls=""),
                Line2D([], [], color="gray", ls="--", lw=1)]
    names = every + ["FastFlow default (tolerance 1)", "fixed settings, named beside the mark", "Euler-50"]
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return names


def plan_timing():
    """Seconds for one plan_skips call at T = 50 and T = 250 (order 1, runs of at most 4): the
    median of 5 rounds after a warm-up call."""
    from models.timing import compare
    out = {}
    for steps in (50, 250):
        table = torch.rand(ff.errors.table_shape(steps, 1, 4), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)

        def plan(table=table, steps=steps):
            ff.plan_skips(table, steps, steps // 3, 1, 4)
            return 1  # compare() counts calls; a plan is one
        out[steps] = compare({"plan": plan}, rounds=5)["plan"].seconds
    return out


def read_previous(path, flag="--update"):
    """The results an --update run merges into (or --replot draws): the JSON at ``path``, or None
    when there is none.

    Raises:
        ValueError: naming ``path``, for a file that is not such a JSON object.
    """
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            old = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"--out-json {path}: cannot {flag} it, not JSON ({e})") from None
    if not isinstance(old, dict) or not isinstance(old.get("models", []), list):
        raise ValueError(f"--out-json {path}: cannot {flag} it, not a results object")
    return old


def main(args):
    """Run the benchmark; both outputs (and, with --update, the file merged into) are checked first."""
    check_writable(args.out_plot, "--out-plot")
    if args.replot:  # the figure of the saved results: nothing is run
        saved = read_previous(args.out_json, "--replot")
        if saved is None:
            raise ValueError(f"--out-json {args.out_json}: cannot --replot it, no such file")
        plot(saved, args.out_plot)
        print(f"wrote {args.out_plot} from {args.out_json}")
        return saved
    check_writable(args.out_json, "--out-json")
    old = read_previous(args.out_json) if args.update else None
    torch.set_num_threads(args.threads) if args.threads else None
    makers = {"toy": toy_workload, "dit": dit_workload, "dit-fashion": lambda q: dit_workload(q, "dit-fashion"),
              "peer": peer_workload}
    result = {"T": T, "args": vars(args), "plan_seconds": plan_timing(), "models": []}
    print(f"plan_skips: {result['plan_seconds'][50] * 1e3:.1f} ms at T = 50, {result['plan_seconds'][250]:.3f} s at T = 250")
    for name in args.models:
        w = makers[name](args.quick)
        if w is None:
            print(f"[{name}] skipped: no checkpoint (python benchmarks/peer_model.py trains it)")
            continue
        result["models"].append(evaluate(w, args))
        print_table(result["models"][-1])
    if args.timing:
        result["timing"], comparison = timing(args)
        result["timing_method"] = {k: v for k, v in comparison.as_dict().items() if k != "timings"}
        print_timing(result["timing"], comparison)
    if old is not None:  # --update: keep the other models' (and timing) results
        ran = {m["model"] for m in result["models"]}
        result["models"] = [m for m in old.get("models", []) if m["model"] not in ran] + result["models"]
        for key in ("timing", "timing_method"):
            if key not in result and key in old:
                result[key] = old[key]
        result["runs"] = old.get("runs", [old.get("args")]) + [vars(args)]
    with open(args.out_json, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    if result["models"]:
        plot(result, args.out_plot)
    print(f"wrote {args.out_json} and {args.out_plot}")
    return result


def print_timing(rows: dict, comparison) -> None:
    """The timing table, with time per model call, each speedup's ceiling and the method's notes."""
    print(f"{'sampler':28s} {'calls':>5s} {'s/batch':>8s} {'ms/call':>8s} {'speedup':>13s} {'ceiling':>8s} "
          f"{'PSNR dB':>8s} {'acc':>5s}")
    for name, t in rows.items():
        speed = speedup_text(t["measured_speedup"], t["speedup_ceiling"])
        psnr = "-" if t["psnr"] is None else f"{t['psnr']:.2f}"
        print(f"{name:28s} {t['calls']:5.0f} {t['seconds']:8.3f} {1e3 * t['seconds_per_call']:8.1f} {speed:>13s} "
              f"{t['speedup_ceiling']:7.2f}x {psnr:>8s} {t['accuracy']:5.2f}")
    for line in [comparison.method()] + comparison.notes():
        print(line)


def print_table(m):
    image = m["model"].startswith("dit")
    unit = "dB" if image else "rel L2"
    print(f"\n[{m['model']}] exact: {m['exact']} ({m['exact_nfe']:.0f} calls); convergence: "
          f"{m['exact_convergence']['check']} is {m['exact_convergence']['rel_l2_check_vs_exact']:.2e} (rel L2) from it; "
          f"Euler-50 against exact: {m['euler50']['vs_exact']['dev']:.4g} {unit}")
    print(f"{'sampler':32s} {'K':>3s} {'calls':>6s} {'vs Euler-50':>12s} {'vs exact':>10s} {'acc':>6s} {'FD':>6s} settle")
    for r in m["rows"]:
        f = lambda k, s: format(r[k], s) if isinstance(r.get(k), (int, float)) else "-"  # noqa: E731
        print(f"{r['label']:32s} {str(r['budget'] or '-'):>3s} {r['calls']:6.1f} {r['dev']:12.4g} {r['vs_exact']:10.4g} "
              f"{f('accuracy', '6.3f')} {f('fd', '6.2f')} {r.get('batches_to_settle', '-')}")


def parse_args(argv=None):
    p = OneLineParser(prog="policies.py", description=__doc__)
    p.add_argument("--models", nargs="*", choices=["toy", "dit", "dit-fashion", "peer"],
                   default=["toy", "dit", "dit-fashion", "peer"],
                   help="models to evaluate (none with --timing to time only)")
    p.add_argument("--budgets", type=positive_int, nargs="+", default=[12, 14, 16, 20, 25],
                   help=f"call budgets K (model calls per sample, at most T = {T})")
    p.add_argument("--order", type=positive_int, default=1, help="extrapolation order of the plan and planning bandit")
    p.add_argument("--warmup", type=nonnegative_int, default=30, help="batches the bandits learn on after calibration")
    p.add_argument("--timing", action="store_true", help="also time Euler-50 against plans on the DiT")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (median reported)")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--update", action="store_true",
                   help="merge into an existing --out-json: replace the models run now, keep the others")
    p.add_argument("--replot", action="store_true",
                   help="only redraw --out-plot from the saved --out-json (seconds; nothing is run)")
    p.add_argument("--out-json", default="results/policies.json", help="all rows and settings")
    p.add_argument("--out-plot", default="results/policies.png", help="PNG of the rows against calls")
    args = p.parse_args(argv)
    try:
        for _, _, make in configs(args.budgets, args.order):  # every sampler's settings, checked now
            make()
    except ValueError as e:
        p.error(f"argument --budgets/--order: {e}")
    return args


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "policies.py"))
