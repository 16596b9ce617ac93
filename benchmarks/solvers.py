"""Every K-call sampler a user would try, at K = 6 to 20 calls, on three models, same noise.

The peers a user of flow models reaches for besides the project's samplers:

* diffusers' ``UniPCMultistepScheduler`` (order 2, bh2, corrector) and
  ``DPMSolverMultistepScheduler`` (DPM-Solver++, order 2), both with flow sigmas
  (``prediction_type="flow_prediction"``, ``use_flow_sigmas=True``), driven by a plain loop;
* time grids optimised along a reference run (``fastflow.optgrid``, in the spirit of Optimal
  Stepsize Distillation): K of the 201 times of an Euler-200 run on the calibration noise, chosen
  by dynamic programming to minimise the summed local Euler errors; Euler, the project's UniPC
  and both diffusers schedulers step on that grid (diffusers' own DPM-Solver++ flow grid starts at
  sigma = 0.999, t = 0.001: the first thousandth of the path is never integrated, a floor under its error);
* AB2 and the project's UniPC on grids cut for their own steps (``optimal_times(..., base=)``, along
  AB2-100 on the calibration noise, every other state with second-order velocities), and UniPC on
  its grid cut from all 100 states (its last step can then be 1/100);

against the project's Euler, AB2, UniPC (``ff.UniPCSampler``), FastFlow's plan on the Euler and
AB2 bases (on T = 50 from 9 calls, below that on the finest coarser grid whose runs of at most 6 skips allow K:
44 steps at K = 8, 30 at K = 6), and the budget choice ``calls=K``
(``ff.make_sampler("best", calls=K)``, ``fastflow.choice``) with each of its two targets.
Everything that calibrates (the grids, FastFlow, the choice) does so on other noise than the
measurement's: 25 digits for the DiT, 2,048 points for the 2-D models. On the DiT the chosen samplers
are then timed against Euler-50 (``time_choices``). About 25 minutes on 2 CPU cores, mostly the DiT.

Columns: deviation from the exact solution and from Euler-50 (PSNR in dB for the DiT, relative L2
for the 2-D models), calls, accuracy and FD for the DiT. The exact solutions are those of
``benchmarks/policies.py`` (Heun-400 with an Euler last step on the DiT, Heun-1000 on the 2-D
models, each checked against half its steps). Verdicts: at every K, is the choice within 0.5 dB
(DiT) or 10% (2-D models) of the best sampler in the table, against the exact flow
(``target="exact"``) and against Euler-50 (``target="euler"``)?

    python benchmarks/solvers.py                      # toy, dit, peer
    python benchmarks/solvers.py --models toy --quick # a smoke run

Writes results/solvers.json and results/solvers.png. Time convention: t = 0 noise, t = 1 data.
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from fastflow.optgrid import optimal_times, trajectory_velocities  # noqa: E402
from fastflow.choice import plan_steps  # noqa: E402
from models.cli import OneLineParser, check_writable, positive_int, run_cli  # noqa: E402
from models.sampling import write_json  # noqa: E402
from benchmarks.policies import T, dit_workload, peer_workload, toy_workload  # noqa: E402

BUDGETS = (6, 8, 10, 12, 16, 20)
FINE = 200              # the Euler reference run the Euler-optimised grids are cut from
CAL_BATCHES = 8         # warm-up batches of 256 points the 2-D models calibrate on
DB_MARGIN, REL_MARGIN = 0.5, 0.10   # "within 0.5 dB" / "within 10%" of the best in the table
CHOICES = {"best, exact target": "exact", "best, Euler-50 target": "euler"}


class DiffusersSampler:
    """A diffusers multistep scheduler as a K-call sampler: ``sample(velocity, x0, **extras)``.

    diffusers' flow convention is sigma = 1 - t (sigma = 1 noise) and its model output is
    noise - data = -v. On ``times`` (an increasing grid from 0 to 1) the scheduler's sigmas are
    replaced by 1 - times, the first moved to 1 - 1e-6 as diffusers' own flow grid does (DPM-Solver++
    takes log(1 - sigma)); otherwise it steps on its own uniform flow grid of K steps.
    """

    KINDS = ("unipc", "dpm++")

    def __init__(self, kind: str, calls: int, times=None):
        if kind not in self.KINDS:
            raise ValueError(f"unknown diffusers scheduler {kind!r}, choose from {self.KINDS}")
        self.kind, self.calls, self.times = kind, calls, times

    def _scheduler(self):
        import diffusers
        flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0, solver_order=2)
        if self.kind == "unipc":
            sched = diffusers.UniPCMultistepScheduler(solver_type="bh2", **flow)
        else:
            sched = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", final_sigmas_type="zero",
                                                          **flow)
        sched.set_timesteps(self.calls)
        if self.times is not None:
            sig = (1 - torch.as_tensor(self.times, dtype=torch.float64)).clamp(0, 1 - 1e-6).float()
            sched.sigmas = sig
            sched.timesteps = sig[:-1] * sched.config.num_train_timesteps
        return sched

    def sample(self, velocity, x_init, **extras):
        sched = self._scheduler()
        x, calls = x_init.clone(), 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, timestep in enumerate(sched.timesteps):
                t = (1 - sched.sigmas[i].double()).to(x.dtype).expand(x.shape[0])
                out = velocity(x=x, t=t, **extras)
                calls += 1
                x = sched.step(-out, timestep, x).prev_sample.to(x_init.dtype)
        return ff.SampleResult(x=x, nfe=calls)

    def __repr__(self):
        grid = "optimised grid" if self.times is not None else "uniform flow grid"
        return f"diffusers {self.kind}, order 2, {self.calls} calls, {grid}"


def calibration(w) -> tuple[dict, torch.Tensor]:
    """The noise everything calibrates on: warm-up batch 0 for the DiT (25 images), batches 0 to
    CAL_BATCHES - 1 for the 2-D models (2048 points: their relative L2 is dominated by the few
    paths near a boundary between modes, which 256 points do not hold; 2-D calls are cheap)."""
    if w.name.startswith("dit"):
        return w.warm(0)
    return {}, torch.cat([w.warm(i)[1] for i in range(CAL_BATCHES)])


def fine_reference(w) -> tuple[list, list]:
    """Times and states of Euler-FINE on the calibration noise."""
    extras, x = calibration(w)
    ref = ff.EulerSampler(FINE).sample(w.velocity, x, trace=True, **extras)
    return ff.EulerSampler(FINE).times.tolist(), ref.trace


def base_grids(w) -> tuple[list, list, list]:
    """Times, states and second-order velocities of AB2-2T on the calibration noise: what
    ``BudgetSampler(target="exact")`` cuts its base-aware grids from (every other state for the
    "-grid" candidates, all 2T for the "-finegrid" ones)."""
    extras, x = calibration(w)
    fine = ff.AdamsBashforthSampler(2 * T)
    ref = fine.sample(w.velocity, x, trace=True, **extras)
    times = fine.times.tolist()
    return times, ref.trace, trajectory_velocities(times, ref.trace)


def samplers_at(K: int, times, states, own, quick: bool) -> dict:
    """name -> sampler making K calls (FastFlow's plans on a coarser grid below 9 calls)."""
    grid = optimal_times(times, states, K)
    out = {"Euler": ff.EulerSampler(K), "AB2": ff.AdamsBashforthSampler(K, order=2),
           "UniPC (ours)": ff.UniPCSampler(K), "Euler, optimised grid": ff.EulerSampler(times=grid),
           "UniPC (ours), optimised grid": ff.UniPCSampler(times=grid)}
    ft, fx, fv = own
    ot, ox, ov = ft[::2], fx[::2], fv[::2]
    out["AB2, its own optimised grid"] = ff.AdamsBashforthSampler(times=optimal_times(ot, ox, K, "ab2", ov))
    out["UniPC (ours), its own optimised grid"] = ff.UniPCSampler(times=optimal_times(ot, ox, K, "unipc", ov))
    out[f"UniPC (ours), its own grid cut from {len(ft) - 1} steps"] = ff.UniPCSampler(
        times=optimal_times(ft, fx, K, "unipc", fv))
    if not quick:
        out.update({"diffusers UniPC": DiffusersSampler("unipc", K),
                    "diffusers UniPC, optimised grid": DiffusersSampler("unipc", K, grid),
                    "diffusers DPM-Solver++": DiffusersSampler("dpm++", K),
                    "diffusers DPM-Solver++, optimised grid": DiffusersSampler("dpm++", K, grid)})
    steps = plan_steps(T, K)  # below 9 calls at T = 50, a coarser grid (fastflow.choice.plan_steps)
    if steps is not None:
        out["FastFlow plan"] = ff.FastFlowSampler(steps, calls=K)
        out["FastFlow plan, AB2 base"] = ff.FastFlowSampler(steps, calls=K, base="ab2")
    for name, target in CHOICES.items():
        out[name] = ff.make_sampler("best", steps=T, calls=K, target=target)
    return out


def closer(a: float, b: float, images: bool) -> bool:
    """Whether deviation a is better than b (PSNR: higher; relative L2: lower)."""
    return a > b if images else a < b


def within(choice: float, best: float, images: bool) -> bool:
    return choice >= best - DB_MARGIN if images else choice <= best * (1 + REL_MARGIN)


def evaluate(w, budgets, quick: bool, progress: bool) -> dict:
    """All samplers at every K on one workload, with the verdicts of the choice."""
    images = w.name.startswith("dit")
    ref, _, _ = w.run(ff.EulerSampler(T))
    exact, _, _ = w.run(w.exact_sampler)
    check, _, _ = w.run(w.check_sampler)
    times, states = fine_reference(w)
    own = base_grids(w)
    e50 = w.score(ref, exact)
    out = {"model": w.name, "units": "PSNR dB" if images else "relative L2", "exact": repr(w.exact_sampler),
           "exact_check": {"against": repr(w.check_sampler), "deviation": w.score(check, exact)["dev"]},
           "euler50_vs_exact": e50["dev"], "euler50": {k: v for k, v in w.score(ref, ref).items() if k != "dev"},
           "rows": [], "verdicts": []}
    chosen = {}
    for K in tqdm(budgets, desc=w.name, disable=not progress):
        rows = []
        for name, sampler in samplers_at(K, times, states, own, quick).items():
            if callable(getattr(sampler, "calibrate", None)):
                extras, x = calibration(w)
                t0 = time.perf_counter()
                sampler.calibrate(w.velocity, x, **extras)
                cal_s = time.perf_counter() - t0
            else:
                cal_s = None
            x, nfe, _ = w.run(sampler)
            s_exact, s_ref = w.score(x, exact), w.score(x, ref)
            row = {"sampler": name, "budget": K, "calls": nfe, "vs_exact": s_exact["dev"], "vs_euler50": s_ref["dev"],
                   **{k: v for k, v in s_ref.items() if k != "dev"}, "calibration_s": cal_s, "repr": repr(sampler)}
            if isinstance(getattr(sampler, "choice", None), dict):
                row["chose"] = sampler.choice["name"]
                row["calibration_calls"] = sampler.choice["calibration_calls"]
                chosen[(K, name)] = sampler
            rows.append(row)
        out["rows"] += rows
        out["verdicts"].append(verdict(K, rows, images))
    if images and not quick:
        out["timing"] = time_choices(w, chosen)
    return out


def time_choices(w, chosen: dict) -> dict:
    """Wall clock of each calibrated choice against Euler-50 on one batch (``models.timing``:
    warm-up, interleaved rounds, medians): after calibration a K-call choice should take K/50 of
    Euler-50's time, the choice costing nothing per run. Returns the comparison and, per choice,
    its time over Euler-50's against K/50."""
    from models.timing import compare
    n = w.batch_size
    x = w.x0[:n]
    extras = {k: (v[:n] if torch.is_tensor(v) else v) for k, v in w.extras.items()}
    runs = {"Euler-50": lambda: ff.EulerSampler(T).sample(w.velocity, x, **extras).nfe}
    for (K, name), s in chosen.items():
        runs[f"{name}, K={K}"] = lambda s=s: s.sample(w.velocity, x, **extras).nfe
    cmp = compare(runs, reference="Euler-50", rounds=3)
    rows = []
    for label, t in cmp.timings.items():
        if label == "Euler-50":
            continue
        ratio = None if t.speedup is None else 1 / t.speedup  # None: above its call-ratio ceiling, not a result
        rows.append({"sampler": label, "calls": t.calls, "seconds": t.seconds, "time_over_euler50": ratio,
                     "calls_over_50": t.calls / T,
                     "within_5pct": ratio is not None and ratio <= 1.05 * t.calls / T})
    for r in rows:
        print(f"{r['sampler']:36s} {r['calls']:4.0f} calls  {r['seconds']:.3f} s  time / Euler-50's "
              f"{'-' if r['time_over_euler50'] is None else format(r['time_over_euler50'], '.3f')}  K/50 "
              f"{r['calls_over_50']:.3f}")
    for line in [cmp.method()] + cmp.notes():
        print(line)
    return {"method": cmp.method(), "notes": cmp.notes(), "euler50_seconds": cmp["Euler-50"].seconds,
            "rows": rows, "comparison": cmp.as_dict()}


def verdict(K: int, rows: list, images: bool) -> dict:
    """The best sampler at K against each reference, and whether the matching choice is within the margin."""
    v = {"budget": K}
    for key, choice in (("vs_exact", "best, exact target"), ("vs_euler50", "best, Euler-50 target")):
        finite = [r for r in rows if r["calls"] == K and r[key] is not None and math.isfinite(r[key])]
        best = finite[0]
        for r in finite[1:]:
            if closer(r[key], best[key], images):
                best = r
        mine = next(r for r in rows if r["sampler"] == choice)
        v[key] = {"best": best["sampler"], "best_value": best[key], "choice": mine[key], "chose": mine.get("chose"),
                  "within": within(mine[key], best[key], images)}
    return v


def plot(results: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(results), figsize=(5.2 * len(results), 8), squeeze=False)
    for col, m in enumerate(results):
        images = m["model"].startswith("dit")
        names = list(dict.fromkeys(r["sampler"] for r in m["rows"]))
        for row, key in enumerate(("vs_exact", "vs_euler50")):
            ax = axes[row][col]
            for name in names:
                pts = [(r["calls"], r[key]) for r in m["rows"] if r["sampler"] == name and r[key] is not None]
                style = dict(lw=2.5, marker="o") if name.startswith("best") else dict(lw=1, marker=".", alpha=0.8)
                ax.plot(*zip(*pts), label=name, **style)
            if key == "vs_exact":
                ax.axhline(m["euler50_vs_exact"], color="k", ls=":", lw=1, label="Euler-50")
            ax.set_xlabel("model calls")
            ax.set_ylabel(f"{m['units']} {'from the exact flow' if key == 'vs_exact' else 'from Euler-50'}")
            if not images:
                ax.set_yscale("log")
            ax.set_title(f"{m['model']}: against {'the exact solution' if key == 'vs_exact' else 'Euler-50'}")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


WORKLOADS = {"toy": toy_workload, "dit": dit_workload, "peer": peer_workload}


def main(args) -> dict:
    check_writable(args.out_json, "--out-json")
    check_writable(args.out_plot, "--out-plot")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with torch.no_grad():
        for name in args.models:
            w = WORKLOADS[name](args.quick)
            if w is None:
                print(f"[{name}] skipped: its checkpoint is missing")
                continue
            t0 = time.perf_counter()
            m = evaluate(w, args.budgets, args.quick, not args.quiet)
            m["seconds"] = time.perf_counter() - t0
            results.append(m)
            print_table(m)
    out = {"T": T, "fine_reference": FINE, "budgets": list(args.budgets), "quick": args.quick, "models": results}
    write_json(out, args.out_json)
    plot(results, args.out_plot)
    print(f"wrote {args.out_json} and {args.out_plot}")
    return out


def print_table(m: dict) -> None:
    print(f"\n[{m['model']}] {m['units']} against the exact solution / Euler-50 (Euler-50 vs exact: "
          f"{m['euler50_vs_exact']:.4g})")
    fmt = (lambda v: "-" if v is None else f"{v:.1f}") if m["model"].startswith("dit") else \
        (lambda v: "-" if v is None else f"{v:.4f}")
    budgets = sorted({r["budget"] for r in m["rows"]})
    names = list(dict.fromkeys(r["sampler"] for r in m["rows"]))
    print(f"{'sampler':40s}" + "".join(f"{'K=' + str(K):>16s}" for K in budgets))
    for name in names:
        cells = []
        for K in budgets:
            r = next((r for r in m["rows"] if r["sampler"] == name and r["budget"] == K), None)
            cells.append("" if r is None else f"{fmt(r['vs_exact'])} / {fmt(r['vs_euler50'])}")
        print(f"{name:40s}" + "".join(f"{c:>16s}" for c in cells))
    for v in m["verdicts"]:
        e, r = v["vs_exact"], v["vs_euler50"]
        print(f"K={v['budget']:>2}: exact: best {e['best']} {fmt(e['best_value'])}, choice {fmt(e['choice'])} "
              f"({e['chose']}) {'ok' if e['within'] else 'MISSED'}; Euler-50: best {r['best']} "
              f"{fmt(r['best_value'])}, choice {fmt(r['choice'])} ({r['chose']}) {'ok' if r['within'] else 'MISSED'}")


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(WORKLOADS), default=["toy", "dit", "peer"])
    p.add_argument("--budgets", type=positive_int, nargs="+", default=list(BUDGETS), help="model calls K")
    p.add_argument("--quick", action="store_true", help="small sizes, no diffusers peers (a smoke run)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out-json", default="results/solvers.json")
    p.add_argument("--out-plot", default="results/solvers.png")
    args = p.parse_args(argv)
    if min(args.budgets) < 2 or max(args.budgets) > T:
        p.error(f"argument --budgets: every K must be in [2, {T}], got {args.budgets}")
    return args


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "solvers.py"))
