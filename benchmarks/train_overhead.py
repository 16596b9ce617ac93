"""How close train.py comes to a bare optimisation step of the same recipe.

The bare step is forward + rectified-flow loss + backward + AdamW on a batch already on the
device, in the precision train.py chooses, and nothing else. train.py's step adds what a real
run needs: drawing the batch (from the device-resident data or through a DataLoader), the noise,
times and label dropout from the per-step generator, warm-up of the learning rate, gradient
clipping, the EMA update and the loss log. The ratio of the two per-step times is the overhead;
the target is at most 1.5.

Timing only: the images are random uint8 written in each data set's real on-disk format (MNIST
idx .gz, a CIFAR-10 pickle batch, an ImageNet-64 .npz), so no download is needed.

    python benchmarks/train_overhead.py                                   # DiT-MNIST-S on this machine
    python benchmarks/train_overhead.py --workloads mnist cifar in64      # on a GPU machine

Writes results/train_overhead_<device>.json with the machine named.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from models.evaluation import machine_info, sync  # noqa: E402
from models.cli import OneLineParser, check_writable, nonnegative_int, positive_int, run_cli  # noqa: E402
from models.dit import DIT_CONFIGS, build_dit  # noqa: E402
from models.training import parse_args as parse_train_args, rectified_flow_loss, train  # noqa: E402

# name: (dataset, model, batch size)
WORKLOADS = {"mnist": ("mnist", "DiT-MNIST-S", 128), "cifar": ("cifar10", "DiT-CIFAR-S", 128),
             "in64": ("imagenet64", "DiT-IN64-B", 64)}


def write_fake_data(dataset: str, root: str, n: int, seed: int = 0) -> None:
    """n random uint8 images with labels, as the test split of `dataset` in its on-disk format."""
    g = np.random.default_rng(seed)
    if dataset == "mnist":
        arrays = [("t10k-images-idx3-ubyte.gz", g.integers(0, 256, (n, 28, 28), dtype=np.uint8), 2051),
                  ("t10k-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8), 2049)]
        for name, arr, magic in arrays:
            header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            with gzip.open(os.path.join(root, name), "wb") as f:
                f.write(header + arr.tobytes())
    elif dataset == "cifar10":
        os.makedirs(os.path.join(root, "cifar-10-batches-py"), exist_ok=True)
        batch = {b"data": g.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": (np.arange(n) % 10).tolist()}
        with open(os.path.join(root, "cifar-10-batches-py", "test_batch"), "wb") as f:
            pickle.dump(batch, f)
    elif dataset == "imagenet64":
        np.savez(os.path.join(root, "val_data.npz"), data=g.integers(0, 256, (n, 3 * 64 * 64), dtype=np.uint8),
                 labels=np.arange(n) % 1000 + 1)
    else:
        raise ValueError(f"no fake data writer for {dataset!r}")


def bare_step_seconds(model_name: str, batch: int, num_classes: int, device: torch.device, precision: str,
                      steps: int, warmup: int) -> float:
    """Seconds per bare optimisation step (median-free: total over `steps` after `warmup`)."""
    torch.manual_seed(0)
    model = build_dit(model_name, num_classes=num_classes).to(device).train()
    c = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if device.type == "cuda" else None)
    x1 = torch.randn(batch, c.in_channels, c.image_size, c.image_size, device=device)
    noise, t = torch.randn_like(x1), torch.rand(batch, device=device)
    y, drop = torch.randint(num_classes, (batch,), device=device), torch.zeros(batch, dtype=torch.bool, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        with autocast:
            loss = rectified_flow_loss(model, x1, y, t, noise, drop)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - start) / steps


def train_step_seconds(dataset: str, root: str, model_name: str, batch: int, device: torch.device, steps: int,
                       warmup: int, data_on_device: str, out_dir: str, threads: int) -> dict:
    """Seconds per train.py step between the first log read (after `warmup` steps) and the last."""
    args = parse_train_args([
        "--dataset", dataset, "--data-root", root, "--split", "test", "--model", model_name,
        "--steps", str(warmup + steps), "--batch-size", str(batch), "--log-every", str(warmup),
        "--ckpt-every", "0", "--sample-every", "0", "--sample-steps", "2", "--out-dir", out_dir,
        "--data-on-device", data_on_device, "--no-progress", "--threads", str(threads)])
    out = train(args)
    (s0, t0), (s1, t1) = out["clock"][0], out["clock"][-1]
    return {"seconds": (t1 - t0) / (s1 - s0), "precision": out["precision"], "data_on_device": out["data_on_device"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="train_overhead.py", description=__doc__)
    p.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=["mnist"],
                   help="model and batch: mnist = DiT-MNIST-S at 128, cifar = DiT-CIFAR-S at 128, "
                        "in64 = DiT-IN64-B at 64")
    p.add_argument("--steps", type=positive_int, default=100, help="timed steps per measurement")
    p.add_argument("--warmup", type=positive_int, default=10, help="untimed steps first")
    p.add_argument("--model", choices=sorted(DIT_CONFIGS), default=None, help="override the workload's model")
    p.add_argument("--batch-size", type=positive_int, default=None, help="override the workload's batch size")
    p.add_argument("--repeats", type=positive_int, default=2, help="interleaved repeats, the best kept")
    p.add_argument("--images", type=positive_int, default=2048, help="size of the fake data set, in images")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--out", default=None, help="result file (default: results/train_overhead_<device>.json)")
    args = p.parse_args(argv)
    for name in args.workloads:
        batch = args.batch_size or WORKLOADS[name][2]
        if args.images < batch:
            p.error(f"argument --images: {args.images} is smaller than one batch of {batch} ({name})")
    return args


def main(argv=None) -> int:
    """Measure the workloads and write the JSON; returns 0.

    ``argv``: the flags, or the Namespace ``parse_args`` made of them. A bad flag exits with status 2;
    an --out that cannot be written raises OSError before any timing starts.
    """
    args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = check_writable(args.out or os.path.join(ROOT, "results", f"train_overhead_{device.type}.json"), "--out")
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.workloads:
        dataset, model_name, batch = WORKLOADS[name]
        model_name, batch = args.model or model_name, args.batch_size or batch
        with tempfile.TemporaryDirectory() as tmp:
            data_root = os.path.join(tmp, "data")
            os.makedirs(data_root)
            write_fake_data(dataset, data_root, args.images)
            runs, bare, num_classes = {}, float("inf"), 1000 if dataset == "imagenet64" else 10
            for r in range(args.repeats):  # interleaved, best of --repeats: the first run in a process is slower
                for placement in ("yes", "no"):
                    run = train_step_seconds(dataset, data_root, model_name, batch, device, args.steps, args.warmup,
                                             placement, os.path.join(tmp, f"{placement}{r}"), args.threads)
                    if placement not in runs or run["seconds"] < runs[placement]["seconds"]:
                        runs[placement] = run
                precision = runs["yes"]["precision"]
                bare = min(bare, bare_step_seconds(model_name, batch, num_classes, device, precision, args.steps,
                                                   args.warmup))
        row = {"workload": name, "model": model_name, "batch": batch, "precision": precision,
               "bare_ms": round(bare * 1e3, 2),
               "train_data_on_device_ms": round(runs["yes"]["seconds"] * 1e3, 2),
               "train_data_loader_ms": round(runs["no"]["seconds"] * 1e3, 2)}
        row["ratio_data_on_device"] = round(runs["yes"]["seconds"] / bare, 3)
        row["ratio_data_loader"] = round(runs["no"]["seconds"] / bare, 3)
        rows.append(row)
        print(json.dumps(row))
    record = {"machine": machine_info(device), "torch": torch.__version__, "steps": args.steps,
              "warmup": args.warmup, "repeats": args.repeats, "threads": torch.get_num_threads(), "rows": rows,
              "command": "python benchmarks/train_overhead.py " + " ".join(argv if isinstance(argv, (list, tuple))
                                                                           else sys.argv[1:])}
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "train_overhead.py"))
