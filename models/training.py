"""The training pieces of train.py, shared with scripts/train_refiner.py and benchmarks/train_overhead.py.

Rectified flow with t in [0, 1], t = 0 noise, t = 1 data: x_t = (1 - t) noise + t data, loss
|| v(x_t, t, y) - (data - noise) ||^2. Per-step randomness (``step_generator``) and data order
(``StepBatchSampler``) make a resumed run reach the same weights as an uninterrupted one; see
train.py's docstring for the whole recipe. ``parse_args`` and ``train`` are train.py's command line
and run (train.py adds only its docstring as the --help text and the exit status).

One writer per run folder: ``train`` holds ``RunLock(--out-dir)`` (rank 0) for the whole run, so a
second train.py into the same folder stops at once with a one-line error naming the holder, and
only the holder removes the temporary files that killed checkpoint writes left behind.
"""

import argparse
import contextlib
import copy
import errno
import fcntl
import json
import os
import re
import socket
import time
from dataclasses import asdict, replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from models.data import DATASETS, VIDEO_DATASETS, ImageTensorDataset, build_dataset, default_root, to_unit_range
from models import DIT_CONFIGS, DiT
from models.video_dit import VIDEO_DIT_CONFIGS, VideoDiT
from models.checkpoint import FULL_KEYS, CheckpointError, load_checkpoint, save_checkpoint
from models.cli import (OneLineParser, check_writable, finite_float, nonnegative_float, nonnegative_int,
                        positive_float, positive_int, seed_int, unit_float)

from models.evaluation import save_grid
from fastflow import EulerSampler


# ---------------------------------------------------------------- randomness and data order


def step_generator(rank_seed: int, step: int) -> torch.Generator:
    """CPU generator for step `step` of a rank whose seed is `rank_seed` (independent streams)."""
    state = np.random.SeedSequence([rank_seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class StepBatchSampler(Sampler):
    """Yields the index batches of steps start_step .. total_steps - 1.

    Step k uses epoch k // B of `sampler` (a DistributedSampler, reshuffled with
    set_epoch) and its (k % B)-th batch, with B = len(sampler) // batch_size; so the
    batch of a step does not depend on where a run was resumed.
    """

    def __init__(self, sampler: DistributedSampler, batch_size: int, start_step: int, total_steps: int):
        self.sampler, self.batch_size = sampler, batch_size
        self.start_step, self.total_steps = start_step, total_steps
        self.batches_per_epoch = len(sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset shard of {len(sampler)} examples is smaller than one batch of {batch_size}")

    def __len__(self):
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        epoch, order = None, None
        for step in range(self.start_step, self.total_steps):
            e, b = divmod(step, self.batches_per_epoch)
            if e != epoch:
                self.sampler.set_epoch(e)
                epoch, order = e, list(self.sampler)
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


class DeviceBatches:
    """The batches of a StepBatchSampler, drawn from an in-memory dataset kept whole on `device`.

    Same indices, order and values as ``DataLoader(dataset, batch_sampler=batches)`` (tested), so
    resuming stays exact; but the uint8 images (N, C, H, W) live on the device and step k costs one
    index copy and one gather + uint8 -> [-1, 1] conversion there, with no per-item Python work,
    no collation and no host-to-device image copy. Yields ((B, C, H, W) float32, (B,) int64).
    """

    def __init__(self, dataset: ImageTensorDataset, batches: Sampler, device: torch.device):
        self.images, self.labels = dataset.images.to(device), dataset.labels.to(device)
        self.image_size, self.batches, self.device = dataset.image_size, batches, device

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for idx in self.batches:
            i = torch.as_tensor(idx, dtype=torch.long).to(self.device, non_blocking=True)
            yield to_unit_range(self.images[i], self.image_size), self.labels[i]


def keep_data_on_device(dataset, device: torch.device, choice: str) -> bool:
    """Whether to use DeviceBatches: "yes", "no", or "auto" = an in-memory dataset (MNIST, CIFAR-10,
    one ImageNet-64 batch file) whose images take at most a quarter of the device's memory."""
    in_memory = isinstance(dataset, ImageTensorDataset)
    if choice == "no":
        return False
    if choice == "yes":
        if not in_memory:
            raise ValueError(f"--data-on-device yes needs an in-memory dataset, got {type(dataset).__name__}; "
                             "use --data-on-device no (folder and multi-file ImageNet data stream through workers)")
        return True
    if not in_memory:
        return False
    if device.type == "cuda":
        return dataset.images.nbytes <= torch.cuda.get_device_properties(device).total_memory // 4
    return True


def choose_precision(choice: str, device: torch.device, n_params: int) -> str:
    """"fp32" or "bf16". "auto": bf16 autocast on CUDA for models of 10M parameters or more, else fp32.

    The threshold follows H100 timings of a bare optimisation step: DiT-MNIST-S (1.3M params) 8.1 ms
    in fp32 and 13.6 ms in bf16 (launch-bound, autocast adds casts); DiT-CIFAR-S (32M) 142 ms in fp32
    without TF32 and 46 ms in bf16; DiT-IN64-B (130M) 223 ms and 53 ms. fp32 on CUDA uses TF32 matmuls.
    """
    if choice != "auto":
        return choice
    return "bf16" if device.type == "cuda" and n_params >= 10_000_000 else "fp32"


def sample_t(n: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Training times, (n,) in (0, 1): uniform, or logit-normal t = sigmoid(z), z ~ N(0, 1) (SD3)."""
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    if kind == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=generator))
    raise ValueError(f"unknown t sampling {kind!r}")


# ---------------------------------------------------------------- loss, EMA, sampling


def rectified_flow_loss(model, x1, y, t, noise, drop):
    """MSE(v(x_t, t, y), x1 - x0) with x0 = noise, x_t = (1 - t) x0 + t x1. Shapes (N, C, H, W) images
    or (N, F, C, H, W) clips, t (N,). A DiT with learn_sigma returns 2C channels: the first C are v."""
    t_ = t.view(-1, *[1] * (x1.ndim - 1))
    x_t = (1 - t_) * noise + t_ * x1
    v = model(x_t, t, y, force_drop_ids=drop)
    if v.shape != x1.shape:
        v = v[:, : x1.shape[1]]
    return F.mse_loss(v.float(), (x1 - noise).float())


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, all parameters in one foreach call (few launches)."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def optimizer_step(opt, model: torch.nn.Module, ema: torch.nn.Module, loss: torch.Tensor, step: int,
                   args) -> float:
    """One AdamW step with linear lr warm-up, grad-norm clipping and the EMA update; returns the lr.

    The EMA decay is min(args.ema_decay, (1 + step) / (10 + step)), so early averages stay recent.
    """
    lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if args.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    opt.step()
    update_ema(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
    return lr


def sample_images(model: DiT | VideoDiT, labels: torch.Tensor, steps: int, cfg_scale: float, seed: int) -> torch.Tensor:
    """Samples (N, C, H, W) in [-1, 1] for `labels` ((N, F, C, H, W) clips from a video model), Euler
    with `steps` steps, noise from `seed`."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    frames = (c.frames,) if isinstance(model, VideoDiT) else ()
    noise = torch.randn(len(labels), *frames, c.in_channels, c.image_size, c.image_size, generator=g)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    extras = dict(y=labels.to(device), cfg_scale=cfg_scale)
    x = EulerSampler(steps).sample(model.forward_with_cfg, noise.to(device), **extras).x
    model.train(was_training)
    return x.clamp(-1, 1).cpu()


def keep_log_until(path: str, step: int) -> None:
    """Drop the log records after ``step`` (written after the checkpoint a run resumes from), so that
    the resumed run logs each step once."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    with open(path, "w") as f:
        f.writelines(kept)


# ---------------------------------------------------------------- setup


class RunLock:
    """An exclusive lock on a run folder: ``<folder>/.train.lock``, locked with ``fcntl.flock`` and
    holding "pid P on HOST" of the writer, removed on release. The lock is the kernel's, so a writer
    killed by any signal leaves no stale lock; the file is only there to name the holder.
    """

    NAME = ".train.lock"

    def __init__(self, folder: str):
        self.folder, self.path, self.fd = folder, os.path.join(folder, self.NAME), None

    def acquire(self) -> "RunLock":
        """Take the lock or fail at once.

        Raises:
            ValueError: naming the folder and the holder, when another process holds it.
            OSError: naming the folder, when the lock file cannot be made or locked (a file
                system without locks).
        """
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OSError(e.errno, f"--out-dir {self.folder}: cannot create {self.path} ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):  # a file system without locks, say
                    os.close(fd)
                    raise OSError(e.errno, f"--out-dir {self.folder}: cannot lock {self.path} ({e.strerror}); "
                                           f"use a local folder") from None
                holder = os.read(fd, 256).decode(errors="replace").strip() or "a process starting up"
                os.close(fd)
                raise ValueError(f"--out-dir {self.folder} is in use by another train.py ({holder}, see "
                                 f"{self.path}); wait for it to end or use another --out-dir") from None
            try:  # the file a releasing holder removed between our open and our lock is no lock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and let go (a no-op when not held)."""
        if self.fd is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def remove_stale_temp_files(folder: str) -> list[str]:
    """Remove the temporary files killed checkpoint writes left in ``folder`` (``.last.pt.*.tmp``,
    atomic_write's names); call only while holding the folder's RunLock. Returns the names removed."""
    stale = sorted(n for n in os.listdir(folder) if re.fullmatch(r"\.last\.pt\.[A-Za-z0-9_]{8}\.tmp", n))
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def lock_run_folder(folder: str, rank: int, world_size: int) -> RunLock | None:
    """Rank 0 takes ``folder``'s RunLock and removes stale temporary files; every rank raises rank
    0's error if it cannot (so no rank waits for a rank 0 that gave up). Returns the lock on rank 0."""
    lock, problem = None, None
    if rank == 0:
        try:
            lock = RunLock(folder).acquire()
            stale = remove_stale_temp_files(folder)
            if stale:
                print(f"removed {len(stale)} temporary file(s) of killed checkpoint writes from {folder}")
        except (ValueError, OSError) as e:
            if lock is not None:
                lock.release()
            problem = " ".join(str(e).split())
    if world_size > 1:
        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        problem = shared[0]
    if problem is not None:
        raise ValueError(problem)
    return lock


def setup_distributed():
    """(rank, world_size, local_rank, device); init a process group only under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, local_rank, device


def int_at_least(low: int):
    """argparse type: an integer >= ``low`` (a bad value is a bad flag, exit status 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    parse.__name__ = f"int_at_least_{low}"
    return parse


ema_decay = unit_float  # argparse type: an EMA decay, a number in [0, 1)


def build_parser(prog: str = "train.py", description: str | None = None) -> OneLineParser:
    """train.py's flags (without the checks that need several of them: see ``parse_args``)."""
    p = OneLineParser(prog=prog, description=description)
    p.add_argument("--dataset", choices=sorted(DATASETS) + sorted(VIDEO_DATASETS), default="mnist",
                   help="training data set (moving-mnist: clips made from the MNIST digits in --data-root, "
                        "shaped by the video --model)")
    p.add_argument("--data-root", default=None, help="data folder (default: ../shared/data/<dataset> next to the repo)")
    p.add_argument("--split", choices=["train", "test"], default="train",
                   help="which split of the data set to train on")
    p.add_argument("--download", action="store_true", help="download the data set if it is missing")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="resize images to this many pixels a side, a multiple of the model's patch size "
                        "(default: native size)")
    p.add_argument("--model", choices=sorted(DIT_CONFIGS) + sorted(VIDEO_DIT_CONFIGS), default=None,
                   help="DiT configuration (default: DiT-MNIST-tiny, or VideoDiT-MM-tiny for moving-mnist); a "
                        "VideoDiT needs --dataset moving-mnist")
    p.add_argument("--steps", type=positive_int, default=1000, help="total optimisation steps")
    p.add_argument("--batch-size", type=positive_int, default=128, help="global batch size (split over ranks)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW peak learning rate")
    p.add_argument("--lr-warmup", "--warmup", dest="warmup", type=nonnegative_int, default=100,
                   help="linear learning-rate warm-up steps (--warmup is the same flag)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="AdamW weight decay")
    p.add_argument("--grad-clip", type=nonnegative_float, default=1.0, help="max grad norm (0 = off)")
    p.add_argument("--ema-decay", type=ema_decay, default=0.999,
                   help="EMA decay in [0, 1); step k uses min(decay, (1 + k) / (10 + k)) so early averages stay "
                        "recent")
    p.add_argument("--t-sampling", choices=["uniform", "logit-normal"], default="logit-normal",
                   help="distribution of the training times t")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the weights, data order, noise and times")
    p.add_argument("--out-dir", default="runs/mnist", help="folder for last.pt, log.jsonl and samples/")
    p.add_argument("--ckpt-every", type=nonnegative_int, default=500,
                   help="write <out-dir>/last.pt every N steps (0 = only at the end)")
    p.add_argument("--sample-every", type=nonnegative_int, default=500,
                   help="write a sample grid every N steps (0 = only at the end)")
    p.add_argument("--sample-steps", type=int_at_least(2), default=50, help="Euler steps of the sample grids")
    p.add_argument("--cfg-scale", type=finite_float, default=1.0,
                   help="classifier-free guidance scale of the sample grids (1 = none)")
    p.add_argument("--log-every", type=positive_int, default=50, help="log the mean loss every N steps")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/last.pt if it exists")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start the weights (and their EMA) from this checkpoint's EMA weights, full or slim, "
                        "of the same model and data; step 0, a fresh optimiser. A run resumed from "
                        "<out-dir>/last.pt keeps its own weights")
    p.add_argument("--export", default=None, help="write a slim EMA-only checkpoint here at the end")
    p.add_argument("--export-dtype", choices=["float32", "float16"], default="float32",
                   help="dtype of the exported weights")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="CPU threads per rank (0 = cores / ranks)")
    p.add_argument("--num-workers", type=int_at_least(-1), default=-1,
                   help="DataLoader workers when the data is not on the device (-1 = auto: up to 8 on CUDA, "
                        "0 on the CPU, whose cores do the training)")
    p.add_argument("--data-on-device", choices=["auto", "yes", "no"], default="auto",
                   help="keep an in-memory dataset (MNIST, CIFAR-10) whole on the device and draw batches there "
                        "(auto: yes when it takes at most a quarter of the device memory)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA for models of 10M+ parameters, else fp32 (TF32 on CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out-dir that already holds a run (its log is restarted)")
    return p


def parse_args(argv=None, prog: str = "train.py", description: str | None = None):
    """train.py's arguments, checked: --image-size against the model's patch size, --resume against
    --overwrite. A bad flag ends with a one-line error and exit status 2."""
    p = build_parser(prog, description)
    args = p.parse_args(argv)
    video_data = args.dataset in VIDEO_DATASETS
    if args.model is None:
        args.model = "VideoDiT-MM-tiny" if video_data else "DiT-MNIST-tiny"
    if video_data != (args.model in VIDEO_DIT_CONFIGS):
        p.error(f"--model {args.model} is {'a video' if not video_data else 'an image'} model but --dataset "
                f"{args.dataset} holds {'clips' if video_data else 'images'}: a VideoDiT-* model goes with "
                f"--dataset moving-mnist and a DiT-* model with image data")
    if video_data and args.image_size is not None:
        p.error("argument --image-size: Moving-MNIST clips take their frame size and count from the video model")
    configs = VIDEO_DIT_CONFIGS if video_data else DIT_CONFIGS
    patch = configs[args.model].patch_size
    if args.image_size is not None and args.image_size % patch:
        p.error(f"argument --image-size: {args.image_size} is not a multiple of {args.model}'s patch size {patch}")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    return args


# ---------------------------------------------------------------- the run


def warm_start(path: str, config, model: torch.nn.Module, ema: torch.nn.Module) -> None:
    """Load a checkpoint's EMA weights (full or slim) into both the model and its EMA: fine-tuning
    goes on from the averaged weights. Its config must be ``config`` (same model, same data shape)."""
    ckpt = load_checkpoint(path, required=("config", "ema"), expected_config=config)
    state = {k: v.float() for k, v in ckpt["ema"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"--init-from {path}: its weights do not fit {type(model).__name__}: {e}") from e
    ema.load_state_dict(state)


def train(args):
    """Train (train.py's run); the output folder and --export are proved writable, and the folder
    locked for this run (``RunLock``), before anything else happens."""
    check_writable(os.path.join(args.out_dir, "last.pt"), "--out-dir")
    if args.export:
        check_writable(args.export, "--export")
    rank, world_size, local_rank, device = setup_distributed()
    lock = lock_run_folder(args.out_dir, rank, world_size)
    try:
        return run(args, rank, world_size, local_rank, device)
    finally:
        if lock is not None:
            lock.release()


def run(args, rank: int, world_size: int, local_rank: int, device: torch.device) -> dict:
    """The training run of ``train``, on a locked --out-dir."""
    if device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(args.threads or max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    if args.batch_size % world_size:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by {world_size} ranks")
    local_batch = args.batch_size // world_size
    rank_seed = args.seed * world_size + rank
    is_main = rank == 0

    if args.download and world_size > 1 and not is_main:
        dist.barrier()  # let rank 0 download first
    video = args.dataset in VIDEO_DATASETS
    if video:  # the clips take their shape from the model
        base = VIDEO_DIT_CONFIGS[args.model]
        dataset, info = VIDEO_DATASETS[args.dataset](
            args.data_root or default_root(args.dataset), train=args.split == "train",
            download=args.download and is_main, frames=base.frames, size=base.image_size)
    else:
        dataset, info = build_dataset(args.dataset, args.data_root, train=args.split == "train",
                                      download=args.download and is_main, image_size=args.image_size)
        base = DIT_CONFIGS[args.model]
    if args.download and world_size > 1 and is_main:
        dist.barrier()
    config = replace(base, image_size=info.image_size, in_channels=info.channels, num_classes=info.num_classes)

    torch.manual_seed(args.seed)  # same initial weights on every rank
    model = (VideoDiT if video else DiT)(config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    n_params = sum(p.numel() for p in model.parameters())
    precision = choose_precision(args.precision, device, n_params)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            fused=True if device.type == "cuda" else None)

    start_step, elapsed_before = 0, 0.0
    last_path = os.path.join(args.out_dir, "last.pt")
    log_path = os.path.join(args.out_dir, "log.jsonl")
    if os.path.isfile(last_path) and not (args.resume or args.overwrite):
        raise ValueError(f"{args.out_dir} already holds a run ({last_path}); pass --resume to continue it, "
                         f"--overwrite to start over, or another --out-dir")
    if args.resume and os.path.isfile(last_path):
        ckpt = load_checkpoint(last_path, required=FULL_KEYS, expected_config=config, map_location=device)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        start_step, elapsed_before = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
        if start_step >= args.steps:
            raise ValueError(f"{last_path} is at step {start_step} already; --steps {args.steps} must be greater")
        if is_main:
            print(f"resumed from {last_path} at step {start_step}")
            keep_log_until(log_path, start_step)
    else:
        if args.init_from:
            warm_start(args.init_from, config, model, ema)
            if is_main:
                print(f"weights from {args.init_from} (EMA), a fresh optimiser at step 0")
        if args.resume and is_main:
            print(f"--resume: {last_path} not found, starting from "
                  f"{'--init-from' if args.init_from else 'scratch'}")

    ddp_model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if world_size > 1 else model
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    batches = StepBatchSampler(sampler, local_batch, start_step, args.steps)
    on_device = keep_data_on_device(dataset, device, args.data_on_device)
    if on_device:
        loader, workers = DeviceBatches(dataset, batches, device), 0
    else:
        workers = args.num_workers if args.num_workers >= 0 else (
            min(8, max(1, (os.cpu_count() or 1) // world_size - 1)) if device.type == "cuda" else 0)
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                            persistent_workers=workers > 0)
    if is_main:
        os.makedirs(args.out_dir, exist_ok=True)
        if start_step == 0 and os.path.exists(log_path):  # a fresh run (or --overwrite): a fresh log
            os.remove(log_path)
        feed = f"data on {device}" if on_device else f"DataLoader with {workers} worker(s)"
        print(f"{args.model}: {n_params / 1e6:.2f}M params, {asdict(config)}; data {asdict(info)}; "
              f"{world_size} rank(s) on {device}, {torch.get_num_threads()} threads, {precision}, {feed}")

    def checkpoint(step, elapsed):
        save_checkpoint(last_path, model=model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                        step=step, config=asdict(config), args=vars(args), data=asdict(info), elapsed_s=elapsed)

    # a sample grid: 8 images of each class, or one clip per class (a row of its frames)
    grid_labels = torch.arange(min(info.num_classes, 10)).repeat(1 if video else 8)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    model.train()
    # The loss stays on the device between log steps: reading it every step would stop the host
    # from queueing the next step's kernels. clock: (step, seconds since t0) at each log read.
    t0, loss_sum, loss_n, last_loss, clock = time.time(), torch.zeros((), device=device), 0, float("nan"), []
    bar = tqdm(total=args.steps, initial=start_step, disable=not is_main or args.no_progress, mininterval=2.0)
    step = start_step
    for x1, y in loader:
        g = step_generator(rank_seed, step)
        noise = torch.randn(x1.shape, generator=g)
        t = sample_t(x1.shape[0], args.t_sampling, g)
        drop = torch.rand(x1.shape[0], generator=g) < config.class_dropout_prob
        x1, y, noise, t, drop = (a.to(device, non_blocking=True) for a in (x1, y, noise, t, drop))

        with autocast:
            loss = rectified_flow_loss(ddp_model, x1, y, t, noise, drop)
        lr = optimizer_step(opt, model, ema, loss, step, args)
        step += 1

        loss_sum, loss_n = loss_sum + loss.detach().float(), loss_n + 1
        bar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            mean = (loss_sum / loss_n).reshape(1)
            if world_size > 1:
                dist.all_reduce(mean)
                mean /= world_size
            last_loss, loss_sum, loss_n = mean.item(), torch.zeros((), device=device), 0
            clock.append((step, time.time() - t0))
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.1e}")
            if is_main:
                record = dict(step=step, loss=last_loss, lr=lr, elapsed_s=elapsed_before + time.time() - t0)
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
        if is_main and args.ckpt_every > 0 and step % args.ckpt_every == 0 and step < args.steps:
            checkpoint(step, elapsed_before + time.time() - t0)
        if is_main and ((args.sample_every > 0 and step % args.sample_every == 0) or step == args.steps):
            images = sample_images(ema, grid_labels, args.sample_steps, args.cfg_scale, seed=args.seed)
            nrow = images.shape[1] if video else len(grid_labels) // 8
            save_grid(images.flatten(0, 1) if video else images,
                      os.path.join(args.out_dir, "samples", f"step_{step:07d}.png"), nrow=nrow)
    bar.close()

    elapsed = elapsed_before + time.time() - t0
    if is_main:
        checkpoint(step, elapsed)
        if args.export:
            dtype = getattr(torch, args.export_dtype)
            save_checkpoint(args.export, ema={k: v.to(dtype) for k, v in ema.state_dict().items()},
                            config=asdict(config), data=asdict(info), step=step, args=vars(args),
                            elapsed_s=elapsed, final_loss=last_loss)
            print(f"exported EMA weights ({args.export_dtype}) to {args.export}")
        print(f"done: step {step}, loss {last_loss:.4f}, {elapsed:.0f} s")
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return dict(step=step, loss=last_loss, elapsed_s=elapsed, model=model, ema=ema, clock=clock,
                precision=precision, data_on_device=on_device)
