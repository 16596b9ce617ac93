"""Skip policies against plain solvers at equal calls, on three models, same noise.

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
* ``peer``: the 2-D checkerboard model trained with the ``flow_matching`` library
  (``benchmarks/peer_model.py``; exact: Heun-1000).

Writes results/policies.json and results/policies.png.

    python benchmarks/policies.py                     # all three models (about 15 minutes on 2 CPU cores)
    python benchmarks/policies.py --models toy --quick
    python benchmarks/policies.py --models peer --update   # add one model to results/policies.json
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from models.cli import OneLineParser, check_writable, nonnegative_int, positive_int, run_cli  # noqa: E402
from models.sampling import calibrates  # noqa: E402

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


def dit_workload(quick):
    from models.evaluation import DEFAULT_CKPT, Judge, balanced_labels, fidelity, make_noise
    from models.checkpoint import load_model
    model, config, _ = load_model(DEFAULT_CKPT, device=torch.device("cpu"))
    shape = (config.in_channels, config.image_size, config.image_size)
    n = 20 if quick else 300
    x0, labels = make_noise(n, shape, 0), balanced_labels(n, config.num_classes)
    judge = Judge()

    def warm(i):
        return {"y": balanced_labels(25, 10), "cfg_scale": 1.0}, make_noise(25, shape, 12345 + 7919 * i)

    def score(x, ref):
        x = x.clamp(-1, 1)
        return {"dev": fidelity(x, ref.clamp(-1, 1))[0], "accuracy": judge.accuracy(x, labels), "fd": judge.fid(x)}

    steps = 20 if quick else 400
    return Workload("dit", model.forward_with_cfg, x0, {"y": labels, "cfg_scale": 1.0}, warm, score,
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
    extras, x = w.warm(0)
    s.calibrate(w.velocity, x, **extras)
    skips = []
    for i in range(1, warmup + 1 if s.policy_name != "plan" else 1):
        extras, x = w.warm(i)
        skips.append(tuple(s.sample(w.velocity, x, **extras).skipped))
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
    """Wall time per batch of 100 digits on the DiT, interleaved rounds, median."""
    from models.evaluation import balanced_labels, make_noise
    from models.checkpoint import load_model
    model, config, _ = load_model(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                               "checkpoints", "dit_mnist.pt"), device=torch.device("cpu"))
    shape = (config.in_channels, config.image_size, config.image_size)
    xb, yb = make_noise(100, shape, 0), balanced_labels(100, 10)
    samplers = {"Euler-50": ff.EulerSampler(T)}
    for K, order in ((16, 1), (14, 1), (14, 2), (13, 2)):
        s = ff.FastFlowSampler(T, calls=K, order=order)
        s.sample(model.forward_with_cfg, make_noise(25, shape, 12345), y=balanced_labels(25, 10), cfg_scale=1.0)
        samplers[f"plan K={K} order {order}"] = s
        samplers[f"plan K={K} order {order} frozen"] = s.freeze()
    samplers["default"] = ff.FastFlowSampler(T)
    samplers["default"].sample(model.forward_with_cfg, make_noise(25, shape, 12345), y=balanced_labels(25, 10),
                               cfg_scale=1.0)
    times = {k: [] for k in samplers}
    psnr = {}
    from models.evaluation import fidelity
    for rnd in tqdm(range(args.repeats + 1), desc="timing rounds"):
        for name, s in samplers.items():
            start = time.perf_counter()
            res = s.sample(model.forward_with_cfg, xb, y=yb, cfg_scale=1.0)
            if rnd > 0:
                times[name].append(time.perf_counter() - start)
            if rnd == 0:
                psnr[name] = res
    ref = psnr["Euler-50"].x.clamp(-1, 1)
    base = statistics.median(times["Euler-50"])
    from models.evaluation import Judge
    judge = Judge()
    return {name: {"seconds": statistics.median(t), "speedup": base / statistics.median(t),
                   "calls": psnr[name].nfe, "psnr": (fidelity(psnr[name].x.clamp(-1, 1), ref)[0]
                                                    if name != "Euler-50" else None),
                   "accuracy": judge.accuracy(psnr[name].x.clamp(-1, 1), yb), "runs": t}
            for name, t in times.items()}


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = [r for r in results["models"]]
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 8.5), squeeze=False)
    for col, m in enumerate(models):
        image = m["model"] == "dit"
        for row, (key, name) in enumerate((("dev", "Euler-50"), ("vs_exact", "exact solution"))):
            ax = axes[row][col]
            labels = sorted({r["label"] for r in m["rows"] if r["budget"] is not None})
            for label in labels:
                pts = sorted((r["calls"], r[key]) for r in m["rows"] if r["label"] == label)
                ax.plot(*zip(*pts), "o-", label=label, lw=2 if "plan" in label else 1)
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
            ax.set_ylabel(("PSNR (dB, higher is better) vs " if image else "relative L2 (lower is better) vs ") + name)
            ax.set_title(f"{m['model']}: against {name}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plan_timing():
    """Seconds for one plan_skips call at T = 50 and T = 250 (order 1, runs of at most 4)."""
    out = {}
    for steps in (50, 250):
        table = torch.rand(ff.errors.table_shape(steps, 1, 4), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            ff.plan_skips(table, steps, steps // 3, 1, 4)
            runs.append(time.perf_counter() - start)
        out[steps] = statistics.median(runs)
    return out


def read_previous(path):
    """The results an --update run merges into: the JSON at ``path``, or None when there is none.

    Raises:
        ValueError: naming ``path``, for a file that is not such a JSON object.
    """
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            old = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"--out-json {path}: cannot --update it, not JSON ({e})") from None
    if not isinstance(old, dict):
        raise ValueError(f"--out-json {path}: cannot --update it, not a results object")
    return old


def main(args):
    """Run the benchmark; both outputs (and, with --update, the file merged into) are checked first."""
    check_writable(args.out_json, "--out-json")
    check_writable(args.out_plot, "--out-plot")
    old = read_previous(args.out_json) if args.update else None
    torch.set_num_threads(args.threads) if args.threads else None
    makers = {"toy": toy_workload, "dit": dit_workload, "peer": peer_workload}
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
        result["timing"] = timing(args)
        for name, t in result["timing"].items():
            print(f"{name:32s} calls {t['calls']:3d}  {t['seconds']:.3f} s  speedup {t['speedup']:.2f}x  "
                  f"PSNR {t['psnr'] if t['psnr'] is None else round(t['psnr'], 2)}  accuracy {t['accuracy']:.2f}")
    if old is not None:  # --update: keep the other models' (and timing) results
        ran = {m["model"] for m in result["models"]}
        result["models"] = [m for m in old.get("models", []) if m["model"] not in ran] + result["models"]
        if "timing" not in result and "timing" in old:
            result["timing"] = old["timing"]
        result["runs"] = old.get("runs", [old.get("args")]) + [vars(args)]
    with open(args.out_json, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    if result["models"]:
        plot(result, args.out_plot)
    print(f"wrote {args.out_json} and {args.out_plot}")
    return result


def print_table(m):
    image = m["model"] == "dit"
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
    p.add_argument("--models", nargs="*", choices=["toy", "dit", "peer"], default=["toy", "dit", "peer"],
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
