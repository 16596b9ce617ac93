"""Distil a tiny velocity refiner (models/refiner.py) from a frozen base DiT.

Time convention: t in [0, 1], t = 0 noise, t = 1 data, x_t = (1 - t) noise + t data.
For a data batch x1 with labels y (dropped to the null class with the base's
class_dropout_prob), noise x0, a random Euler step dt ~ U(0, max_dt] and t ~ U[0, 1 - dt):

    x_t = (1 - t) x0 + t x1,   u = v(x_t, t, y),   x' = x_t + dt u,   target = v(x', t + dt, y),
    loss = || u + r(x', t + dt, u, y) - target ||^2,

with v the base model (EMA weights, eval mode, no grad) and r the refiner. The zero
refiner (r = 0, plain velocity reuse) scores || u - target ||^2; both are reported on a
held-out set: the last --holdout digits of the split (the refiner never trains on them;
the shipped base saw all 10k test digits), with noise, t, dt and label drops from a
generator seeded with HOLDOUT_SEED, the same for every run.

Examples:
    python scripts/train_refiner.py --base checkpoints/dit_mnist.pt --steps 2000 --export checkpoints/refiner_mnist.pt
    python scripts/train_refiner.py ... --resume          # continue from <out-dir>/last.pt

Reproducibility as in train.py: refiner init from --seed, data order from a seeded
DistributedSampler (epoch = step // batches_per_epoch), the noise/t/dt/drops of step k
from step_generator(seed, k); a resumed run reaches the same weights.
"""

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from models.data import DATASETS, build_dataset  # noqa: E402
from models.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint  # noqa: E402
from models.refiner import (RefinerConfig, VelocityRefiner, base_fingerprint, count_params,  # noqa: E402
                            refiner_config_from_dict, save_refiner)
from models.cli import (OneLineParser, check_writable, finite_float, nonnegative_float, nonnegative_int,  # noqa: E402
                        positive_float, positive_int, run_cli, seed_int)
from models.training import StepBatchSampler, ema_decay, optimizer_step, sample_t, step_generator  # noqa: E402

HOLDOUT_SEED = 1234
TRAIN_KEYS = ("model", "ema", "optimizer", "step", "refiner_config", "base", "args")


@dataclass
class DistillBatch:
    """One distillation batch; all tensors have batch size N.

    x: (N, C, H, W) Euler-stepped state x' at time t.   t: (N,) time t_prev + dt.
    u: (N, C, H, W) teacher velocity at the previous point.   target: (N, C, H, W) v(x', t).
    y: (N,) labels (before dropout).   drop: (N,) bool, True where the label is the null class.
    """

    x: torch.Tensor
    t: torch.Tensor
    u: torch.Tensor
    target: torch.Tensor
    y: torch.Tensor
    drop: torch.Tensor


def draw_step(n: int, max_dt: float, t_sampling: str, drop_prob: float, g: torch.Generator):
    """Per-example (dt, t, drop): dt ~ U(0, max_dt], t = s (1 - dt) with s ~ t_sampling, drop ~ Bernoulli."""
    dt = max_dt * (1.0 - torch.rand(n, generator=g))  # (N,) in (0, max_dt]
    t = sample_t(n, t_sampling, g) * (1.0 - dt)  # (N,) in [0, 1 - dt]
    drop = torch.rand(n, generator=g) < drop_prob  # (N,)
    return dt, t, drop


@torch.no_grad()
def teacher_batch(base, x1, y, noise, t, dt, drop) -> DistillBatch:
    """Two base calls: u = v(x_t, t), x' = x_t + dt u, target = v(x', t + dt). Shapes as DistillBatch."""
    C = x1.shape[1]
    x_t = (1 - t.view(-1, 1, 1, 1)) * noise + t.view(-1, 1, 1, 1) * x1  # (N, C, H, W)
    u = base(x_t, t, y, force_drop_ids=drop)[:, :C]  # (N, C, H, W)
    x_next = x_t + dt.view(-1, 1, 1, 1) * u  # (N, C, H, W)
    target = base(x_next, t + dt, y, force_drop_ids=drop)[:, :C]  # (N, C, H, W)
    return DistillBatch(x=x_next, t=t + dt, u=u, target=target, y=y, drop=drop)


def refined(refiner, b: DistillBatch) -> torch.Tensor:
    """u + r(x', t, u, y_dropped): the refiner's estimate of the target, (N, C, H, W)."""
    return b.u + refiner(b.x, b.t, b.u, b.y, force_drop_ids=b.drop)


def distill_loss(refiner, b: DistillBatch) -> torch.Tensor:
    """MSE(u + r(x', t, u, y), target), a scalar."""
    return F.mse_loss(refined(refiner, b).float(), b.target.float())


@torch.no_grad()
def make_holdout(base, dataset, max_dt: float, drop_prob: float, t_sampling: str = "uniform",
                 batch_size: int = 250, device="cpu") -> list[DistillBatch]:
    """Fixed distillation batches for `dataset` (all of it, in order), from HOLDOUT_SEED."""
    g = torch.Generator().manual_seed(HOLDOUT_SEED)
    out = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x1 = torch.stack([a for a, _ in items])
        y = torch.tensor([b for _, b in items], dtype=torch.long)
        noise = torch.randn(x1.shape, generator=g)
        dt, t, drop = draw_step(len(items), max_dt, t_sampling, drop_prob, g)
        args = (a.to(device) for a in (x1, y, noise, t, dt, drop))
        out.append(teacher_batch(base, *args))
    return out


@torch.no_grad()
def holdout_loss(refiner, batches: list[DistillBatch]) -> float:
    """Mean squared error over every pixel of the held-out set; refiner=None scores r = 0."""
    sse, count = 0.0, 0
    for b in batches:
        est = b.u if refiner is None else refined(refiner, b)
        sse += (est.double() - b.target.double()).pow(2).sum().item()
        count += b.target.numel()
    return sse / count


def max_dt_float(text: str) -> float:
    """argparse type: the largest Euler step, a number in (0, 1]."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def parse_args(argv=None):
    p = OneLineParser(prog="train_refiner.py", description=__doc__)
    p.add_argument("--base", default="checkpoints/dit_mnist.pt", help="frozen base DiT (EMA weights are used)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist", help="distillation data set")
    p.add_argument("--data-root", default=None, help="data folder (default: ../shared/data/<dataset> next to the repo)")
    p.add_argument("--split", choices=["train", "test"], default="test", help="which split of the data set to use")
    p.add_argument("--holdout", type=positive_int, default=1000,
                   help="last N examples of the split, never trained on")
    p.add_argument("--steps", type=positive_int, default=2000, help="total optimisation steps")
    p.add_argument("--batch-size", type=positive_int, default=128, help="examples per step")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW peak learning rate")
    p.add_argument("--warmup", type=nonnegative_int, default=50, help="linear learning-rate warmup steps")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="AdamW weight decay")
    p.add_argument("--grad-clip", type=nonnegative_float, default=1.0, help="max grad norm (0 = off)")
    p.add_argument("--ema-decay", type=ema_decay, default=0.995,
                   help="EMA decay in [0, 1); step k uses min(decay, (1 + k) / (10 + k))")
    p.add_argument("--max-dt", type=max_dt_float, default=0.12, help="Euler step dt ~ U(0, max_dt], in (0, 1]")
    p.add_argument("--t-sampling", choices=["uniform", "logit-normal"], default="uniform",
                   help="t = s (1 - dt) with s drawn this way")
    p.add_argument("--hidden-size", type=positive_int, default=RefinerConfig.hidden_size,
                   help="refiner width, a multiple of 4 and of --num-heads")
    p.add_argument("--depth", type=positive_int, default=RefinerConfig.depth, help="refiner DiT blocks")
    p.add_argument("--num-heads", type=positive_int, default=RefinerConfig.num_heads, help="attention heads")
    p.add_argument("--mlp-ratio", type=positive_float, default=RefinerConfig.mlp_ratio,
                   help="MLP hidden width / --hidden-size")
    p.add_argument("--frequency-size", type=positive_int, default=RefinerConfig.frequency_size,
                   help="sinusoid size of the time embedding (even)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the refiner's weights, data order and noise")
    p.add_argument("--out-dir", default="runs/refiner", help="folder for last.pt and log.jsonl")
    p.add_argument("--ckpt-every", type=nonnegative_int, default=250,
                   help="write <out-dir>/last.pt every N steps (0 = only at the end)")
    p.add_argument("--log-every", type=positive_int, default=50, help="log the mean loss every N steps")
    p.add_argument("--eval-every", type=nonnegative_int, default=0,
                   help="held-out loss every N steps (0 = only at the end)")
    p.add_argument("--eval-batch", type=positive_int, default=250, help="examples per held-out batch")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/last.pt if it exists")
    p.add_argument("--export", default=None, help="write the slim EMA refiner here at the end")
    p.add_argument("--threads", type=nonnegative_int, default=1,
                   help="CPU threads (0 = torch's default; the machine is shared)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.hidden_size % 4 or args.hidden_size % args.num_heads:  # 4: the 2-D sin-cos position embedding
        p.error(f"argument --hidden-size: {args.hidden_size} is not a multiple of 4 and of --num-heads "
                f"{args.num_heads}")
    if args.frequency_size % 2:
        p.error(f"argument --frequency-size: expected an even number, got {args.frequency_size}")
    return args


def main(args):
    """Train, checkpoint, evaluate on the hold-out and export.

    Returns:
        dict(step, loss (mean train loss of the last log window), heldout_loss (EMA refiner),
        zero_loss (r = 0), elapsed_s, refiner, ema).
    """
    check_writable(os.path.join(args.out_dir, "last.pt"), "--out-dir")
    if args.export:
        check_writable(args.export, "--export")
    device = torch.device("cpu")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    base, base_config, _ = load_model(args.base, device=device, kind="image")
    base.requires_grad_(False).eval()
    fingerprint = base_fingerprint(base)

    dataset, info = build_dataset(args.dataset, args.data_root, train=args.split == "train",
                                  image_size=base_config.image_size)
    if (info.channels, info.image_size) != (base_config.in_channels, base_config.image_size) or \
            info.num_classes > base_config.num_classes:
        raise ValueError(f"data {asdict(info)} do not fit the base model {asdict(base_config)}")
    if not 0 < args.holdout < len(dataset):
        raise ValueError(f"--holdout must be in 1..{len(dataset) - 1}, got {args.holdout}")
    n_train = len(dataset) - args.holdout
    train_set, held_set = Subset(dataset, range(n_train)), Subset(dataset, range(n_train, len(dataset)))

    config = RefinerConfig.for_base(base_config, hidden_size=args.hidden_size, depth=args.depth,
                                    num_heads=args.num_heads, mlp_ratio=args.mlp_ratio,
                                    frequency_size=args.frequency_size)
    torch.manual_seed(args.seed)
    refiner = VelocityRefiner(config).to(device)
    ema = copy.deepcopy(refiner).requires_grad_(False).eval()
    opt = torch.optim.AdamW(refiner.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    start_step, elapsed_before = 0, 0.0
    last_path = os.path.join(args.out_dir, "last.pt")
    if args.resume and os.path.isfile(last_path):
        ckpt = load_checkpoint(last_path, required=TRAIN_KEYS)
        if refiner_config_from_dict(ckpt["refiner_config"], last_path) != config:
            raise CheckpointError(f"{last_path}: refiner config {ckpt['refiner_config']} != {asdict(config)}")
        if ckpt["base"] != fingerprint:
            raise CheckpointError(f"{last_path} was trained against another base model than {args.base}")
        refiner.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        start_step, elapsed_before = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
        print(f"resumed from {last_path} at step {start_step}")
    elif args.resume:
        print(f"--resume: {last_path} not found, starting from scratch")

    os.makedirs(args.out_dir, exist_ok=True)
    n_params, n_base = count_params(refiner), count_params(base)
    print(f"refiner {n_params:,} params = {100 * n_params / n_base:.2f}% of the base ({n_base:,}); {asdict(config)}; "
          f"{n_train} train / {args.holdout} held-out examples; {torch.get_num_threads()} thread(s)")

    holdout = make_holdout(base, held_set, args.max_dt, base_config.class_dropout_prob, args.t_sampling,
                           args.eval_batch, device)
    zero_loss = holdout_loss(None, holdout)

    def checkpoint(step, elapsed):
        save_checkpoint(last_path, model=refiner.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                        step=step, refiner_config=asdict(config), base=fingerprint, args=vars(args),
                        data=asdict(info), elapsed_s=elapsed)

    def log(record):
        with open(os.path.join(args.out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(train_set, batch_sampler=StepBatchSampler(sampler, args.batch_size, start_step, args.steps))
    refiner.train()
    t0, loss_sum, loss_n, last_loss = time.time(), 0.0, 0, float("nan")
    bar = tqdm(total=args.steps, initial=start_step, disable=args.no_progress, mininterval=2.0)
    step = start_step
    for x1, y in loader:
        g = step_generator(args.seed, step)
        noise = torch.randn(x1.shape, generator=g)
        dt, t, drop = draw_step(x1.shape[0], args.max_dt, args.t_sampling, base_config.class_dropout_prob, g)
        batch = teacher_batch(base, x1.to(device), y.to(device), noise.to(device), t.to(device), dt.to(device),
                              drop.to(device))

        loss = distill_loss(refiner, batch)
        lr = optimizer_step(opt, refiner, ema, loss, step, args)
        step += 1

        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.5f}", zero=f"{zero_loss:.5f}")
        if step % args.log_every == 0 or step == args.steps:
            last_loss, loss_sum, loss_n = loss_sum / loss_n, 0.0, 0
            record = dict(step=step, loss=last_loss, lr=lr, elapsed_s=elapsed_before + time.time() - t0)
            if args.eval_every > 0 and (step % args.eval_every == 0):
                record.update(heldout_loss=holdout_loss(ema, holdout), zero_loss=zero_loss)
            log(record)
        if args.ckpt_every > 0 and step % args.ckpt_every == 0 and step < args.steps:
            checkpoint(step, elapsed_before + time.time() - t0)
    bar.close()

    elapsed = elapsed_before + time.time() - t0
    checkpoint(step, elapsed)
    heldout = holdout_loss(ema, holdout)
    log(dict(step=step, heldout_loss=heldout, zero_loss=zero_loss, elapsed_s=elapsed))
    print(f"held-out distillation loss ({args.holdout} examples, seed {HOLDOUT_SEED}): refiner (EMA) {heldout:.6f} "
          f"vs zero refiner {zero_loss:.6f} ({heldout / zero_loss:.3f}x)")
    if args.export:
        meta = dict(step=step, elapsed_s=elapsed, heldout_loss=heldout, zero_refiner_loss=zero_loss,
                    holdout=dict(examples=args.holdout, seed=HOLDOUT_SEED, max_dt=args.max_dt,
                                 t_sampling=args.t_sampling),
                    params=n_params, base_params=n_base, base_path=args.base, data=asdict(info), args=vars(args))
        save_refiner(args.export, ema, base, meta=meta)
        print(f"exported EMA refiner to {args.export}")
    print(f"done: step {step}, loss {last_loss:.6f}, {elapsed:.0f} s")
    return dict(step=step, loss=last_loss, heldout_loss=heldout, zero_loss=zero_loss, elapsed_s=elapsed,
                refiner=refiner, ema=ema)


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "train_refiner.py"))
