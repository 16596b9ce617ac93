"""The prepared check for a GPU machine: everything the project says about GPUs, measured in one run
of at most about 8 minutes, written to one JSON with the machine named (``make gpu-check``).

Steps, each in its own process with a time limit, each recorded whether it passes or not:
1. the imports a bare GPU machine must have (torch with CUDA, numpy, einops, tqdm, matplotlib, pytest);
2. the CUDA-marked tests (tests/test_cuda.py);
3. benchmarks/gpu_overhead.py, eager and under torch.compile (reduce-overhead: CUDA graphs);
4. benchmarks/train_overhead.py (random data written in each set's real format: no data files needed);
5. the main job's timing: Euler-50 against FastFlow on the shipped DiT at batch 100 (models/timing.py:
   warm-up, median of interleaved rounds, the device synchronised before each clock read, speedups
   checked against their call-ratio ceiling). It needs no torchvision, no data and no network.

    python3 scripts/gpu_check.py                     # writes outputs/gpu_check.json
    python3 scripts/gpu_check.py --budget 300 --out /tmp/g.json

Time convention: t = 0 is noise, t = 1 is data.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPORTS = ["torch", "numpy", "einops", "tqdm", "matplotlib", "pytest"]

MAIN_JOB = r"""
import json, sys, torch
sys.path.insert(0, ".")
import fastflow as ff
from models.checkpoint import load_model
from models.evaluation import balanced_labels, index_noise
from models.timing import compare
device = torch.device("cuda")
torch.set_grad_enabled(False)
model, config, _ = load_model("checkpoints/dit_mnist.pt", device=device)
shape = (config.in_channels, config.image_size, config.image_size)
x0 = index_noise(range(100), shape, 0).to(device)
y = balanced_labels(100, config.num_classes).to(device)
extras = dict(y=y, cfg_scale=1.0)
fast = ff.FastFlowSampler(50)
fast.calibrate(model.forward_with_cfg, index_noise(range(1000, 1025), shape, 1).to(device), y=y[:25], cfg_scale=1.0)
samplers = {"euler": ff.EulerSampler(50), "fastflow": fast}
runs = {k: (lambda s=s: s.sample(model.forward_with_cfg, x0, **extras).nfe) for k, s in samplers.items()}
c = compare(runs, reference="euler", rounds=9, device=device)
print(json.dumps({"timing": c.as_dict(), "notes": c.notes(), "method": c.method(),
                  "ms_per_call": {k: 1e3 * c[k].seconds_per_call for k in runs},
                  "speedup": c["fastflow"].speedup, "ceiling": c["fastflow"].ceiling}))
"""


def step(name: str, cmd: list[str], limit: float, parse_json: bool = False) -> dict:
    """Run one step in ``ROOT``; its outcome, time and output tail (or parsed JSON) as a dict."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(limit, 1))
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", e.stdout or "", e.stderr or ""
        out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
    result = {"step": name, "ok": rc == 0, "returncode": rc, "seconds": round(time.perf_counter() - start, 1),
              "command": " ".join(cmd)}
    if parse_json and rc == 0:
        try:
            result["result"] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result["ok"] = False
    result["output_tail"] = (out + err)[-3000:]
    print(f"{name}: {'ok' if result['ok'] else 'FAILED (' + str(rc) + ')'} in {result['seconds']} s", flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "gpu_check.json"), help="the JSON written")
    p.add_argument("--budget", type=float, default=480, help="seconds for all steps together (default: 480)")
    args = p.parse_args(argv)
    py, deadline = sys.executable, time.perf_counter() + args.budget
    left = lambda share: min(share, deadline - time.perf_counter())  # noqa: E731
    probe = ("import importlib, json, torch; mods = {m: bool(importlib.util.find_spec(m)) for m in %r}; "
             "print(json.dumps({'modules': mods, 'torch': torch.__version__, 'cuda': torch.cuda.is_available(), "
             "'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "
             "'python': __import__('sys').version.split()[0]}))" % IMPORTS)
    steps = [step("imports", [py, "-c", probe], left(60), parse_json=True)]
    machine = steps[0].get("result", {})
    if not machine.get("cuda"):
        print("gpu_check: error: no CUDA device here; this check is for a GPU machine", file=sys.stderr)
    else:
        steps.append(step("cuda tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                          left(120)))
        for mode in ("none", "reduce-overhead"):
            steps.append(step(f"gpu_overhead ({mode})", [py, "benchmarks/gpu_overhead.py", "--compile", mode,
                                                         "--out-json", f"outputs/gpu_overhead_{mode}.json"], left(120)))
        steps.append(step("train_overhead", [py, "benchmarks/train_overhead.py", "--workloads", "mnist", "cifar",
                                             "--out", "outputs/train_overhead_cuda.json"], left(100)))
        steps.append(step("main job timing", [py, "-c", MAIN_JOB], left(90), parse_json=True))
        for s in steps:  # the benchmarks' own JSON, folded in
            for flag in ("--out-json", "--out"):
                if flag in s["command"].split() and s["ok"]:
                    path = s["command"].split()[s["command"].split().index(flag) + 1]
                    with open(os.path.join(ROOT, path)) as f:
                        s["result"] = json.load(f)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine, "steps": steps,
              "all_ok": all(s["ok"] for s in steps) and bool(machine.get("cuda"))}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}: {'all steps ok' if report['all_ok'] else 'some steps FAILED'}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
