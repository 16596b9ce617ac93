"""How much of a sampling run is spent outside the model: Euler-50 against FastFlow.

For each workload (the shipped MNIST DiT at batch 100; randomly initialised DiT-CIFAR-S at batch
128 and DiT-IN64-B at batch 64, timing only) and each sampler it reports the wall time of one
batch (median of --repeats runs after a warm-up run), the number of model calls, and the share
of wall time spent outside the model. The model time is measured by events recorded around
every call on the device (CUDA events on a GPU, the host clock after a sync on a CPU), read at
the end of the run, so measuring does not add host syncs inside the loop on a GPU.

    python benchmarks/gpu_overhead.py                          # on a GPU machine: all three workloads
    python benchmarks/gpu_overhead.py --workloads mnist --device cpu
    python benchmarks/gpu_overhead.py --compile reduce-overhead    # also with the model under CUDA graphs

Writes results/gpu_overhead_<device>.json with the machine named.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from models.cli import OneLineParser, check_writable, positive_int, resolve_device, run_cli  # noqa: E402
from models.evaluation import DEFAULT_CKPT, balanced_labels, machine_info, make_noise, sync  # noqa: E402

WORKLOADS = {"mnist": ("DiT-MNIST-S", 100), "cifar": ("DiT-CIFAR-S", 128), "in64": ("DiT-IN64-B", 64)}


class ModelClock:
    """Wraps a velocity; records the time spent in each call without reading it during the run."""

    def __init__(self, fn, device: torch.device):
        self.fn, self.device, self.pairs, self.seconds = fn, device, [], 0.0

    def __call__(self, **kwargs):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.fn(**kwargs)
            end.record()
            self.pairs.append((start, end))
            return out
        begin = time.perf_counter()
        out = self.fn(**kwargs)
        self.seconds += time.perf_counter() - begin
        return out

    def total(self) -> float:
        """Seconds inside the model so far (synchronises the device once)."""
        sync(self.device)
        return self.seconds + sum(s.elapsed_time(e) for s, e in self.pairs) / 1e3


def build(workload: str, device: torch.device):
    from models.checkpoint import load_model
    from models.dit import build_dit
    name, batch = WORKLOADS[workload]
    if workload == "mnist":
        model, config, _ = load_model(DEFAULT_CKPT, device=device)
    else:  # timing only: random weights of the right size
        model = build_dit(name).to(device).eval()
        config = model.config
    shape = (config.in_channels, config.image_size, config.image_size)
    return model, shape, config.num_classes, batch


def compiled_velocity(fn, mode: str):
    """``torch.compile(fn, mode=mode)``, cloning outputs under CUDA graphs ("reduce-overhead",
    "max-autotune"): a graph replay overwrites its last output, and AB2 and FastFlow keep earlier
    velocities."""
    compiled = torch.compile(fn, mode=None if mode == "default" else mode)
    if mode == "default":
        return compiled

    def velocity(**kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(**kwargs).clone()
    return velocity


def measure(workload: str, args, device: torch.device) -> dict:
    model, shape, classes, batch = build(workload, device)
    x = make_noise(batch, shape, 0).to(device)
    y = balanced_labels(batch, classes).to(device)
    calib = make_noise(batch, shape, 1).to(device)
    fast = ff.FastFlowSampler(50, calls=args.calls)
    with torch.no_grad():
        fast.sample(model.forward_with_cfg, calib, y=y, cfg_scale=1.0)  # calibration run, untimed
    runs = [("Euler-50", ff.EulerSampler(50), model.forward_with_cfg),
            (f"FastFlow-50 plan K={args.calls}", fast, model.forward_with_cfg),
            (f"FastFlow-50 plan K={args.calls} frozen", fast.freeze(), model.forward_with_cfg)]
    if args.compile != "none":  # the same runs with the compiled model; its warm-up run compiles
        velocity = compiled_velocity(model.forward_with_cfg, args.compile)
        runs += [(f"{label} compiled ({args.compile})", sampler, velocity) for label, sampler, _ in runs]
    out = {}
    for label, sampler, velocity in runs:
        walls, shares, calls = [], [], 0
        for rep in range(args.repeats + 1):
            clock = ModelClock(velocity, device)
            sync(device)
            begin = time.perf_counter()
            with torch.no_grad():
                res = sampler.sample(clock, x, y=y, cfg_scale=1.0)
            sync(device)
            wall = time.perf_counter() - begin
            if rep > 0:
                walls.append(wall)
                shares.append(max(wall - clock.total(), 0.0) / wall)
            calls = res.nfe
        out[label] = {"calls": calls, "seconds": statistics.median(walls), "outside_model": statistics.median(shares)}
    return {"workload": workload, "model": WORKLOADS[workload][0], "batch": batch, "samplers": out}


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="gpu_overhead.py", description=__doc__)
    p.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=["mnist", "cifar", "in64"],
                   help="which models to time")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N or mps")
    p.add_argument("--calls", type=positive_int, default=16, help="FastFlow's call budget (model calls per sample)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs per sampler after one warm-up")
    p.add_argument("--compile", choices=["none", "default", "reduce-overhead", "max-autotune"], default="none",
                   help="also time every run with torch.compile of the model in this mode (reduce-overhead = "
                        "CUDA graphs on a GPU); the warm-up run pays the compilation")
    p.add_argument("--out-json", default=None, help="result file (default: results/gpu_overhead_<device type>.json)")
    args = p.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as e:
        p.error(f"argument --device: {e}")
    try:
        ff.FastFlowSampler(50, calls=args.calls)
    except ValueError as e:
        p.error(f"argument --calls: {e}")
    return args


def main(argv=None) -> int:
    """Time the workloads and write the JSON; returns 0.

    ``argv``: the flags, or the Namespace ``parse_args`` made of them. A bad flag exits with status 2;
    an output path that cannot be written raises OSError before any timing starts.
    """
    args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
    device = resolve_device(args.device)
    path = check_writable(args.out_json or os.path.join("results", f"gpu_overhead_{device.type}.json"), "--out-json")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    result = {"machine": machine_info(device), "args": vars(args),
              "rows": [measure(w, args, device) for w in args.workloads]}
    for r in result["rows"]:
        for label, s in r["samplers"].items():
            print(f"{r['model']:12s} batch {r['batch']:3d} {label:50s} calls {s['calls']:3d} {s['seconds']:8.4f} s "
                  f"outside model {100 * s['outside_model']:5.1f}%")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "gpu_overhead.py"))
