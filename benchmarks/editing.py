"""FastFlow on the paper's third task, editing, on the shipped DiT: partial generation (SDEdit),
inversion then regeneration, and FlowEdit (fastflow.editing), each at K calls per pass against
Euler-K and against the full-step edit (Euler-T), on the same sources and noise. Below the
fewest calls a plan can make on T steps (9 at T = 50), FastFlow plans on the finest grid that
admits K (``plan_steps``: 44 steps for K = 8) and is still compared with the T-step edit.

Sources: the first --n MNIST test digits that are not --target-class; every edit turns them into
that class (a fixed class, 8 by default), and "reconstruct" regenerates each source under its own
label after inversion (guidance 1). FastFlow calibrates on --calibration-samples other sources,
then plays its plan. Columns: edit success (the project's digit classifier reads the target
class), preservation (PSNR to the source), PSNR against the full-step edit, model calls per
source, and wall time (models/timing.py: warm-up, median of interleaved rounds, speedups checked
against their call-ratio ceiling) on the first --timing-samples sources.

FlowEdit runs with its noise shared across steps (smooth in t, so skippable) and, as
"flowedit-fresh", with the paper's fresh draw per step; for the methods that draw noise, the
full-step edit run again on another seed says how far the edit moves with its noise alone.

Also measured: a sweep of each method's setting (SDEdit's t0, FlowEdit's t_start) at full steps,
the trade-off between edit success and preservation; and the one-step extrapolation errors along
each edit path against plain generation (where the path is straight, skipping is cheap).

    python benchmarks/editing.py                    # 100 sources: about 30 minutes on 2 CPU cores
    python benchmarks/editing.py --n 16 --budgets 10 16 --sweep-n 8 --timing-samples 4   # a smoke run

Writes results/editing.json and results/editing.png.
Time convention: t = 0 is noise, t = 1 is data; images are in [-1, 1].
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from fastflow.metrics import classifier_accuracy  # noqa: E402
from fastflow.plan import min_calls  # noqa: E402
from fastflow.specs import DEFAULT_MAX_RUN  # noqa: E402
from models.checkpoint import load_model  # noqa: E402
from models.classifier import check_judge, load_classifier  # noqa: E402
from models.cli import OneLineParser, positive_int, run_cli  # noqa: E402
from models.editing import Editor, load_sources  # noqa: E402
from models.evaluation import DEFAULT_CKPT, DEFAULT_CLASSIFIER, fidelity, make_noise, machine_info  # noqa: E402
from models.sampling import write_json  # noqa: E402
from models.timing import compare, speedup_text  # noqa: E402

# method name -> (fastflow.editing method, edit.py settings); "reconstruct" checks the inversion
SETTINGS = {
    "reconstruct": dict(method="invert", target_class="source", cfg=1.0),
    "invert": dict(method="invert", cfg=2.0),
    "sdedit": dict(method="sdedit", t0=0.3, cfg=2.0),
    "flowedit": dict(method="flowedit", t0=0.1, cfg=2.0, n_avg=1, noise="shared"),
    "flowedit-fresh": dict(method="flowedit", t0=0.1, cfg=2.0, n_avg=1, noise="fresh"),
}


def edit_args(args, sampler="euler", calls=None, **settings) -> argparse.Namespace:
    """The settings of one edit, in the form models.editing reads (those of edit.py)."""
    base = dict(method="invert", target_class=str(args.target_class), t0=0.3, cfg=2.0, n_avg=1, noise="shared", seed=args.seed,
                steps=args.steps, sampler=sampler, calls=calls, n=args.n, split="test", image=None,
                data_root=args.data_root, calibration_samples=args.calibration_samples)
    return argparse.Namespace(**{**base, **settings})


def plan_steps(K: int, steps: int) -> int:
    """The grid FastFlow plans K calls on: the full T steps, or, for a K below the fewest calls a
    plan can make there (9 at T = 50), the finest grid that admits it (44 steps for K = 8)."""
    T = steps
    while T > 4 and min_calls(T, 1, DEFAULT_MAX_RUN) > K:
        T -= 1
    return T


def score(judge, edits, sources, target, full=None) -> dict:
    row = {"edit_success": classifier_accuracy(judge, edits.cpu(), target), "preservation_psnr": fidelity(edits, sources)[0]}
    if full is not None:
        row["psnr_vs_full_steps"] = fidelity(edits, full)[0]
    return row


def one_step_errors(sampler: ff.FastFlowSampler) -> dict:
    """table[k, 1, 1] against t_k: the error of extrapolating one step ahead along the calibrated path."""
    T = sampler.steps
    return {"t": sampler.times[1:T - 1].tolist(), "error": [float(sampler.table[k, 1, 1]) for k in range(1, T - 1)]}


def main(args) -> dict:
    with torch.no_grad():  # scoped: a caller's autograd state is left as it was
        return measure(args)


def measure(args) -> dict:
    device = torch.device("cpu")
    model, config, meta = load_model(args.ckpt, device=device, kind="image")
    velocity = model.eval().forward_with_cfg
    judge = load_classifier(DEFAULT_CLASSIFIER)
    check_judge(judge, meta)
    shape = (config.in_channels, config.image_size, config.image_size)
    out = {"machine": machine_info(device), "n": args.n, "steps": args.steps, "target_class": args.target_class,
           "budgets": args.budgets, "methods": {}, "sweeps": {}, "paths": {}}

    for name, settings in SETTINGS.items():
        a = edit_args(args, **settings)
        sources, src_labels, cal, cal_labels = load_sources(edit_args(args, sampler="fastflow", **settings), config,
                                                            device)
        target = src_labels.clone() if a.target_class == "source" else torch.full_like(src_labels, args.target_class)
        cal_target = cal_labels.clone() if a.target_class == "source" else torch.full_like(cal_labels,
                                                                                             args.target_class)
        full_editor = Editor(a, velocity, shape, device, full=True)
        full, full_calls = full_editor(sources, src_labels, target)
        rows = [{"sampler": f"Euler-{args.steps}", "calls": full_calls, **score(judge, full, sources, target)}]
        if a.method != "invert":  # how far the full-step edit itself moves with its noise: the floor of a match
            reseeded, _ = Editor(edit_args(args, **{**settings, "seed": args.seed + 1}), velocity, shape, device,
                                 full=True)(sources, src_labels, target)
            out.setdefault("reseeded", {})[name] = {"sampler": f"Euler-{args.steps}, seed {args.seed + 1}",
                                                    **score(judge, reseeded, sources, target, full)}
        timed = {}
        small = slice(0, args.timing_samples)
        timed[f"Euler-{args.steps}"] = lambda e=full_editor: e(sources[small], src_labels[small], target[small])[1]
        for K in tqdm(args.budgets, desc=name, disable=args.quiet):
            grid_steps = plan_steps(K, args.steps)
            ff_editor = Editor(edit_args(args, sampler="fastflow", calls=K, **{**settings, "steps": grid_steps}),
                               velocity, shape, device)
            ff_editor(cal, cal_labels, cal_target)  # calibration: the edit's own path, other sources
            if K == args.budgets[-1]:
                out["paths"][name] = [one_step_errors(s) for s in ff_editor.samplers]
            edits, calls = ff_editor(sources, src_labels, target)
            rows.append({"sampler": f"FastFlow K={K}", "calls": calls, "grid_steps": grid_steps,
                         **score(judge, edits, sources, target, full)})
            euler = Editor(edit_args(args, steps=K, **settings), velocity, shape, device)
            edits_k, calls_k = euler(sources, src_labels, target)
            rows.append({"sampler": f"Euler-{K}", "calls": calls_k, **score(judge, edits_k, sources, target, full)})
            timed[f"FastFlow K={K}"] = lambda e=ff_editor: e(sources[small], src_labels[small], target[small])[1]
            timed[f"Euler-{K}"] = lambda e=euler: e(sources[small], src_labels[small], target[small])[1]
        timing = compare(timed, reference=f"Euler-{args.steps}", rounds=args.rounds, device=device)
        for r in rows:
            t = timing[r["sampler"]]
            r.update(seconds=t.seconds, seconds_per_call=t.seconds_per_call, speedup=t.speedup,
                     speedup_ceiling=t.ceiling, measured_speedup=t.measured_speedup)
        out["methods"][name] = {"settings": settings, "rows": rows, "timing": timing.as_dict(),
                                "timing_notes": timing.notes()}
        if not args.quiet:
            print(f"\n{name} {settings}  ({timing.method()})")
            print(f"{'sampler':<16}{'calls':>6}{'success':>9}{'keep dB':>9}{'vs full dB':>11}{'s/call':>9}{'speedup':>14}")
            for r in rows:
                vs = r.get("psnr_vs_full_steps")
                print(f"{r['sampler']:<16}{r['calls']:>6}{r['edit_success']:>9.0%}{r['preservation_psnr']:>9.1f}"
                      f"{'-' if vs is None else format(vs, '.1f'):>11}{r['seconds_per_call']:>9.4f}"
                      f"{speedup_text(r['measured_speedup'], r['speedup_ceiling']):>14}")
            if name in out.get("reseeded", {}):
                r = out["reseeded"][name]
                print(f"full-step edit on another seed: {r['psnr_vs_full_steps']:.1f} dB from the full edit, "
                      f"success {r['edit_success']:.0%}")
            for line in timing.notes():
                print(line)

    # the settings: edit success against preservation, at full steps, on --sweep-n sources
    for name, key, values in (("sdedit", "t0", args.sdedit_t0), ("flowedit", "t0", args.flowedit_t0),
                              ("flowedit-fresh", "t0", args.flowedit_t0)):
        curve = []
        for v in tqdm(values, desc=f"{name} sweep", disable=args.quiet):
            a = edit_args(args, n=args.sweep_n, **{**SETTINGS[name], key: v})
            sources, src_labels, _, _ = load_sources(a, config, device)
            target = torch.full_like(src_labels, args.target_class)
            edits, _ = Editor(a, velocity, shape, device, full=True)(sources, src_labels, target)
            curve.append({key: v, **score(judge, edits, sources, target)})
        out["sweeps"][name] = curve
    gen = ff.FastFlowSampler(args.steps, calls=args.budgets[-1])
    gen.calibrate(velocity, make_noise(args.calibration_samples, shape, seed=args.seed + 1),
                  y=torch.arange(args.calibration_samples) % config.num_classes, cfg_scale=1.0)
    out["paths"]["generation"] = [one_step_errors(gen)]
    write_json(out, args.out_json)
    plot(out, args.plot)
    if not args.quiet:
        print(f"wrote {args.out_json} and {args.plot}")
    return out


def plot(out: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6))
    for i, (name, m) in enumerate(out["methods"].items()):
        c = f"C{i}"
        for prefix, style in (("FastFlow", "-o"), ("Euler-", "--s")):
            rows = [r for r in m["rows"] if r["sampler"].startswith(prefix) and "psnr_vs_full_steps" in r]
            ax[0].plot([r["calls"] for r in rows], [r["psnr_vs_full_steps"] for r in rows], style, color=c,
                       label=f"{name}: {'FastFlow' if prefix == 'FastFlow' else 'Euler at equal calls'}")
    ax[0].set(xlabel="model calls per source", ylabel="PSNR against the full-step edit (dB)",
              title=f"edits at K calls per pass ({out['n']} digits)")
    ax[0].legend(fontsize=7)
    for name, curve in out["sweeps"].items():
        ax[1].plot([r["preservation_psnr"] for r in curve], [100 * r["edit_success"] for r in curve], "-o", label=name)
        for r in curve:
            ax[1].annotate(f"t={r['t0']:g}", (r["preservation_psnr"], 100 * r["edit_success"]), fontsize=7)
    ax[1].set(xlabel="preservation: PSNR to the source (dB)", ylabel=f"edit success: read as {out['target_class']} (%)",
              title="the setting's trade-off (full steps)")
    ax[1].legend(fontsize=8)
    for name, paths in out["paths"].items():
        for j, p in enumerate(paths):
            label = name if len(paths) == 1 else f"{name} ({'back to noise' if j == 0 else 'forward'})"
            ax[2].semilogy(p["t"], p["error"], label=label)
    ax[2].set(xlabel="t (0 noise, 1 data)", ylabel="one-step extrapolation error (relative)",
              title="where skipping is cheap, per path")
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = OneLineParser(prog="benchmarks/editing.py", description=__doc__)
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="model checkpoint")
    p.add_argument("--data-root", default=None, help="MNIST folder (None: ../shared/data/mnist)")
    p.add_argument("--n", type=positive_int, default=100, help="sources per method")
    p.add_argument("--steps", type=positive_int, default=50, help="T of the full-step edit and of FastFlow's grid")
    p.add_argument("--budgets", type=positive_int, nargs="+", default=[8, 10, 12, 16, 20],
                   help="K calls per pass")
    p.add_argument("--target-class", type=int, default=8, help="the class every edit aims at")
    p.add_argument("--calibration-samples", type=positive_int, default=16, help="other sources FastFlow calibrates on")
    p.add_argument("--sweep-n", type=positive_int, default=50, help="sources per setting of the sweeps")
    p.add_argument("--sdedit-t0", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    p.add_argument("--flowedit-t0", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])  # both noises
    p.add_argument("--timing-samples", type=positive_int, default=25, help="sources per timed run")
    p.add_argument("--rounds", type=positive_int, default=3, help="interleaved timed rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-json", default="results/editing.json")
    p.add_argument("--plot", default="results/editing.png")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "benchmarks/editing.py"))
