"""Train a classifier that judges samples (``fastflow.metrics``) and store real-data feature statistics.

Two datasets (``--dataset``), each scaled to [-1, 1]:

* ``mnist`` (default): the 10,000 MNIST test digits (t10k idx files). The
  first 9,000 train the network, the last 1,000 are held out for validation;
  the statistics are over all 10,000 (the DiT trains on the same digits).
* ``fashion-mnist``: the 60,000 Fashion-MNIST train images. The first 55,000
  train it, the last 5,000 are held out for validation; the 10,000 test
  images are never trained on: they give the test accuracy and the statistics.

Augmentation: a random integer shift of up to +-2 pixels in each direction
per image (padding with the background value -1), so the classifier does not
rely on exact centring and generalises to generated images.

After training it writes
  * ``--out``        the classifier (config + weights + dataset + meta, atomic), and
  * ``--stats-out``  mean (D,) and covariance (D, D), float64, of the
                     classifier's features on the reference images above.

Example::

    python scripts/train_classifier.py --seed 0
    python scripts/train_classifier.py --dataset fashion-mnist --seed 0 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
from fastflow.metrics import classifier_accuracy, feature_statistics  # noqa: E402
from models.classifier import (  # noqa: E402
    ClassifierConfig,
    DigitClassifier,
    extract_features,
    save_classifier,
    save_feature_stats,
)
from models.cli import (OneLineParser, check_writable, nonnegative_float, nonnegative_int,  # noqa: E402
                        positive_float, positive_int, run_cli, seed_int, unit_float)
from models.data import build_dataset  # noqa: E402


def resolve(path: str) -> str:
    """Resolve a relative path against the repository root (not the working directory)."""
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(REPO_ROOT, path))


# --dataset -> defaults of the flags that differ, and what the data are (see the module docstring)
DATASETS = {
    "mnist": dict(data_root="../shared/data/mnist", out="checkpoints/mnist_classifier.pt",
                  stats_out="checkpoints/mnist_feature_stats.pt", epochs=30, val=1000),
    "fashion-mnist": dict(data_root="../shared/data/fashion-mnist", out="checkpoints/fashion_classifier.pt",
                          stats_out="checkpoints/fashion_feature_stats.pt", epochs=8, val=5000),
}


def load_images(name: str, root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of an idx dataset as images (N, 1, 28, 28) float32 in [-1, 1] and labels (N,) int64."""
    dataset, _ = build_dataset(name, root, train=train)
    return dataset.images.float().div(127.5).sub(1.0), dataset.labels  # (N, 1, 28, 28), (N,)


def load_digits(root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST t10k as images (N, 1, 28, 28) float32 in [-1, 1] and labels (N,) int64."""
    return load_images("mnist", root, train=False)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by an independent integer (dy, dx) in [-max_shift, max_shift]^2.

    Args:
        x: (B, 1, H, W) images in [-1, 1]; the uncovered border is filled with -1.
        max_shift: largest shift in pixels.
        generator: source of randomness.

    Returns:
        (B, 1, H, W) shifted images.
    """
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)  # (B, 1, H+2p, W+2p)
    off = torch.randint(0, 2 * p + 1, (b, 2), generator=generator)  # crop offsets
    rows = off[:, :1] + torch.arange(h)  # (B, H)
    cols = off[:, 1:] + torch.arange(w)  # (B, W)
    bidx = torch.arange(b)[:, None, None]
    return padded[bidx, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)  # (B, 1, H, W)


def main(args: argparse.Namespace) -> dict:
    """Train and write --out and --stats-out (both proved writable before the data are read)."""
    for key, value in DATASETS[args.dataset].items():  # flags left unset take the dataset's default
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_writable(resolve(args.out), "--out")
    check_writable(resolve(args.stats_out), "--stats-out")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)

    fashion = args.dataset == "fashion-mnist"
    x_all, y_all = load_images(args.dataset, resolve(args.data_root), train=fashion)
    x_ref, y_ref = load_images(args.dataset, resolve(args.data_root), train=False) if fashion else (x_all, y_all)
    n_val = args.val
    if n_val + args.batch_size > len(x_all):
        raise ValueError(f"--val {n_val} plus one --batch-size {args.batch_size} of training images is more than "
                         f"the {len(x_all)} images in {resolve(args.data_root)}")
    x_tr, y_tr = x_all[:-n_val], y_all[:-n_val]
    x_va, y_va = x_all[-n_val:], y_all[-n_val:]
    print(f"data: {len(x_tr)} train / {len(x_va)} val {args.dataset} images from {resolve(args.data_root)}")

    config = ClassifierConfig(channels=tuple(args.channels), feature_dim=args.feature_dim, dropout=args.dropout)
    model = DigitClassifier(config, args.dataset)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {config} ({n_params:,} parameters)")

    steps_per_epoch = len(x_tr) // args.batch_size  # drop the last partial batch (BatchNorm needs > 1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)

    t0 = time.perf_counter()
    bar = tqdm(range(args.epochs), desc="epochs")
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total, n = 0.0, 0
        for i in range(0, steps_per_epoch * args.batch_size, args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = random_shift(x_tr[idx], args.max_shift, gen)
            loss = F.cross_entropy(model(xb), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        val_acc = classifier_accuracy(model, x_va, y_va)
        bar.set_postfix(loss=f"{total / n:.4f}", val_acc=f"{val_acc:.4f}")
        tqdm.write(f"epoch {epoch + 1:3d}  train loss {total / n:.4f}  val acc {val_acc:.4f}")
    train_seconds = time.perf_counter() - t0

    model.eval()
    val_acc = classifier_accuracy(model, x_va, y_va)
    val_acc_shifted = classifier_accuracy(model, random_shift(x_va, args.max_shift, gen), y_va)
    ref_acc = classifier_accuracy(model, x_ref, y_ref)
    meta = {
        "val_accuracy": val_acc,
        "val_accuracy_shifted": val_acc_shifted,
        ("test_accuracy" if fashion else "all_10k_accuracy"): ref_acc,
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": train_seconds,
        "data": (f"Fashion-MNIST train: first {len(x_tr)} train, last {n_val} validation; test: {len(x_ref)}, [-1, 1]"
                 if fashion else "MNIST t10k: first 9000 train, last 1000 validation, [-1, 1]"),
    }
    save_classifier(resolve(args.out), model, meta)

    feats = extract_features(model, x_ref)  # (10000, D)
    mu, sigma = feature_statistics(feats)
    save_feature_stats(resolve(args.stats_out), mu, sigma, len(x_ref), model,
                       source=(f"Fashion-MNIST test, all {len(x_ref)} real images, [-1, 1], no augmentation" if fashion
                               else "MNIST t10k, all 10000 real digits, [-1, 1], no augmentation"))
    dead = int((feats.max(dim=0).values <= 0).sum())
    print(f"train wall time {train_seconds:.1f} s")
    print(f"val accuracy {val_acc:.4f} (with random +-{args.max_shift}px shifts: {val_acc_shifted:.4f}); "
          f"{'test' if fashion else 'all 10k'}: {ref_acc:.4f}")
    print(f"features: D={feats.shape[1]}, {dead} never-active units, rank(sigma)={int(torch.linalg.matrix_rank(sigma))}")
    print(f"wrote {resolve(args.out)} ({os.path.getsize(resolve(args.out)):,} B), "
          f"{resolve(args.stats_out)} ({os.path.getsize(resolve(args.stats_out)):,} B)")
    return meta


dropout_prob = unit_float  # argparse type: a dropout probability, a number in [0, 1)


def batch_size_int(text: str) -> int:
    """argparse type: a batch size of at least 2 (BatchNorm needs more than one digit per batch)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}")
    return value


def get_parser() -> OneLineParser:
    p = OneLineParser(prog="train_classifier.py", description=__doc__)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist",
                   help="what to train on; it sets the defaults of the five flags below that say 'dataset's'")
    p.add_argument("--data-root", default=None,
                   help="folder with the idx files, relative to the repo root (dataset's: ../shared/data/<dataset>)")
    p.add_argument("--out", default=None,
                   help="classifier file to write, relative to the repo root (dataset's: "
                        "checkpoints/mnist_classifier.pt or checkpoints/fashion_classifier.pt)")
    p.add_argument("--stats-out", default=None,
                   help="real-data feature statistics file to write, relative to the repo root (dataset's: "
                        "checkpoints/mnist_feature_stats.pt or checkpoints/fashion_feature_stats.pt)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the weights, batch order and shifts")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the training images (dataset's: mnist 30, fashion-mnist 8)")
    p.add_argument("--batch-size", type=batch_size_int, default=128,
                   help="digits per step (at least 2: BatchNorm)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="AdamW peak learning rate (one-cycle schedule)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--val", type=positive_int, default=None,
                   help="hold out the last VAL training images for validation "
                        "(dataset's: mnist 1000, fashion-mnist 5000)")
    p.add_argument("--max-shift", type=nonnegative_int, default=2, help="random shift augmentation, in pixels")
    p.add_argument("--channels", type=positive_int, nargs=3, default=[16, 32, 64],
                   help="channels of the three convolution stages")
    p.add_argument("--feature-dim", type=positive_int, default=128, help="size D of the feature layer")
    p.add_argument("--dropout", type=dropout_prob, default=0.2, help="dropout probability in [0, 1)")
    p.add_argument("--threads", type=nonnegative_int, default=2, help="torch intra-op threads (0 = torch's default)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return get_parser().parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "train_classifier.py"))
