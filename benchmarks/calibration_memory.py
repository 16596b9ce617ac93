"""Peak extra memory of FastFlow's calibration run against an Euler run of the same batch.

The calibration run is a full Euler run that also records the error table of every possible
skip (``fastflow.errors.TableRecorder``). This measures what that recording costs in memory,
for extrapolation orders 1 and 2, T = 20 and 50 steps, and batches of 16 MB and 64 MB (float32),
with a cheap analytic velocity so that the model itself holds nothing.

On the CPU each measurement runs in a fresh process and compares peak resident memory
(``ru_maxrss``) of the calibration run with that of the Euler run; on CUDA it compares
``torch.cuda.max_memory_allocated``. The target: at most the run's real velocities plus a few
batch-sized buffers (at T = 20, order 1, a 16 MB batch: about 26 batch sizes, ~430 MB).

    python benchmarks/calibration_memory.py                    # CPU, all 8 cases
    python benchmarks/calibration_memory.py --device cuda

``FASTFLOW_ROOT=/path/to/other/checkout`` measures another version of the library.
Writes results/calibration_memory_<device>.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from fastflow.atomic import atomic_write  # noqa: E402
from models.cli import OneLineParser, check_writable, run_cli  # noqa: E402

CHILD = r"""
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
import fastflow as ff
mode, order, T, mb, device = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(2)
n = mb * 2 ** 20 // 4
x = torch.randn(n // 1024, 1024, generator=torch.Generator().manual_seed(0)).to(device)
def velocity(x, t):                           # a flow whose velocity bends in t, one new tensor per call
    return torch.cos(3 * t[0]) * x + 0.1
sampler = ff.EulerSampler(T) if mode == "euler" else ff.FastFlowSampler(T, calls=T - 2, order=order)
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
run = sampler.sample if mode == "euler" else getattr(sampler, "calibrate", sampler.sample)  # older versions: first sample()
run(velocity, x)
if device == "cuda":
    torch.cuda.synchronize(); print(torch.cuda.max_memory_allocated() - base)
else:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def measure(mode: str, order: int, steps: int, mb: int, device: str, root: str) -> int:
    """Peak bytes of one run in a fresh process (resident set on the CPU, allocated on CUDA)."""
    # big blocks straight from mmap, so that freed memory leaves the resident set at once
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", CHILD, root, mode, str(order), str(steps), str(mb), device],
                         capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.split()[-1])


def parse_args(argv=None):
    """The command line (see the module docstring)."""
    p = OneLineParser(prog="calibration_memory.py", description=__doc__)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.add_argument("--orders", type=int, nargs="+", default=[1, 2], choices=[1, 2, 3], help="extrapolation orders")
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50], help="step counts T")
    p.add_argument("--megabytes", type=int, nargs="+", default=[16, 64], help="batch sizes in MB (float32)")
    p.add_argument("--out-json", default=None, help="output (default results/calibration_memory_<device>.json)")
    return p.parse_args(argv)


def main(args) -> int:
    """Measure every case, print a table, write the JSON."""
    out = args.out_json or os.path.join(ROOT, "results", f"calibration_memory_{args.device}.json")
    check_writable(out, "--out-json")
    root = os.environ.get("FASTFLOW_ROOT", ROOT)
    rows = []
    print(f"{'order':>5} {'T':>3} {'batch':>6} {'Euler peak':>11} {'calibration':>12} {'extra':>9} {'batches':>8}")
    for mb in args.megabytes:
        for T in args.steps:
            euler = measure("euler", 1, T, mb, args.device, root)
            for p in args.orders:
                calib = measure("calibrate", p, T, mb, args.device, root)
                extra = calib - euler
                rows.append({"order": p, "steps": T, "batch_mb": mb, "euler_peak": euler, "calibration_peak": calib,
                             "extra_bytes": extra, "extra_batches": extra / (mb * 2 ** 20)})
                print(f"{p:>5} {T:>3} {mb:>4}MB {euler / 2 ** 20:>9.0f}MB {calib / 2 ** 20:>10.0f}MB "
                      f"{extra / 2 ** 20:>7.0f}MB {extra / (mb * 2 ** 20):>8.1f}", flush=True)
    atomic_write(out, lambda f: json.dump({"device": args.device, "library": root, "rows": rows}, f, indent=1),
                 binary=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "calibration_memory.py"))
