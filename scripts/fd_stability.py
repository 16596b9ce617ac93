"""How stable is the Frechet distance of the shipped judges? Real images against the reference statistics.

For each dataset, the shipped classifier's features of real images are compared with its stored
statistics (the 10,000 test images; ``models.classifier.default_judge_files``):

* ``test``: ``--repeats`` random subsets of n test images (without replacement) for every n of
  ``--sizes``; the subsets are part of the reference, so this is the finite-sample bias alone;
* ``train`` (Fashion-MNIST only, whose train split is apart from the reference): random subsets
  of n train images, the floor a model trained on that split can reach at that n;
* ``halves``: ``--repeats`` random splits of the test set into two disjoint halves, FD between
  the halves' own statistics (5,000 against 5,000), and the one split into the first and the
  last 5,000 (MNIST's t10k halves come from different writers).

FD has a positive bias that shrinks roughly like 1/n (both covariances are estimated), so only
values from equal n compare. Each row gives the mean, standard deviation, min and max over the
repeats.

Example::

    python scripts/fd_stability.py --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
from fastflow.atomic import atomic_write  # noqa: E402
from fastflow.metrics import feature_statistics, frechet_distance  # noqa: E402
from models.classifier import default_judge_files, extract_features, load_classifier, load_feature_stats  # noqa: E402
from models.cli import OneLineParser, check_writable, nonnegative_int, positive_int, run_cli, seed_int  # noqa: E402
from models.data import build_dataset, default_root  # noqa: E402


def summary(values: list[float]) -> dict:
    """Mean, standard deviation (n - 1), min and max of repeated FDs."""
    v = torch.tensor(values, dtype=torch.float64)
    return {"mean": v.mean().item(), "std": v.std().item() if len(v) > 1 else 0.0, "min": v.min().item(),
            "max": v.max().item(), "repeats": len(values)}


def subset_fds(feats: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, n: int, repeats: int,
               generator: torch.Generator) -> list[float]:
    """FD of ``repeats`` random n-row subsets of ``feats`` (N, D) to the Gaussian (mu, sigma)."""
    return [frechet_distance(*feature_statistics(feats[torch.randperm(len(feats), generator=generator)[:n]]), mu, sigma)
            for _ in range(repeats)]


def half_fds(feats: torch.Tensor, repeats: int, generator: torch.Generator) -> list[float]:
    """FD between the two disjoint halves of ``repeats`` random splits of ``feats`` (N, D)."""
    out, half = [], len(feats) // 2
    for _ in range(repeats):
        perm = torch.randperm(len(feats), generator=generator)
        a, b = feats[perm[:half]], feats[perm[half:2 * half]]
        out.append(frechet_distance(*feature_statistics(a), *feature_statistics(b)))
    return out


def images(name: str, train: bool) -> torch.Tensor:
    """One split of ``name`` from its default folder, (N, 1, 28, 28) in [-1, 1]."""
    dataset, _ = build_dataset(name, default_root(name), train=train)
    return dataset.images.float().div(127.5).sub(1.0)


def measure(name: str, args: argparse.Namespace, generator: torch.Generator) -> dict:
    """Every row of one dataset (see the module docstring)."""
    clf_path, stats_path = default_judge_files(name)
    clf = load_classifier(clf_path)
    mu, sigma = load_feature_stats(stats_path, clf)
    splits = {"test": extract_features(clf, images(name, train=False))}  # (10000, D)
    if name == "fashion-mnist":
        splits["train"] = extract_features(clf, images(name, train=True))  # (60000, D)
    out = {"classifier": os.path.relpath(clf_path, REPO_ROOT), "feature_dim": int(mu.numel()), "rows": []}
    for split, feats in splits.items():
        for n in args.sizes:
            if n > len(feats):
                raise ValueError(f"--sizes {n} is more than the {len(feats)} {name} {split} images")
            out["rows"].append({"sample": f"{split} subset", "n": n,
                                **summary(subset_fds(feats, mu, sigma, n, args.repeats, generator))})
    test, n_half = splits["test"], len(splits["test"]) // 2
    out["rows"].append({"sample": "test half vs other half", "n": n_half,
                        **summary(half_fds(test, args.repeats, generator))})
    first_last = frechet_distance(*feature_statistics(test[:n_half]), *feature_statistics(test[n_half:2 * n_half]))
    out["rows"].append({"sample": "test first vs last half", "n": n_half, **summary([first_last])})
    return out


def main(args: argparse.Namespace) -> dict:
    check_writable(args.out, "--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    report = {"seed": args.seed, "repeats": args.repeats, "datasets": {}}
    for name in args.datasets:
        report["datasets"][name] = measure(name, args, generator)
    report["seconds"] = time.perf_counter() - start
    atomic_write(args.out, lambda f: json.dump(report, f, indent=1), binary=False)
    for name, res in report["datasets"].items():
        print(f"{name} ({res['classifier']}, D = {res['feature_dim']}): FD to the test-set statistics")
        for r in res["rows"]:
            print(f"  {r['sample']:24s} n={r['n']:5d}  {r['mean']:7.3f} +- {r['std']:.3f}  "
                  f"[{r['min']:.3f}, {r['max']:.3f}]  ({r['repeats']} repeats)")
    print(f"wrote {args.out} in {report['seconds']:.0f} s")
    return report


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="fd_stability.py", description=__doc__)
    p.add_argument("--datasets", nargs="+", choices=["fashion-mnist", "mnist"], default=["fashion-mnist", "mnist"],
                   help="whose shipped judges to measure")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[500, 1000, 2000, 5000],
                   help="subset sizes n")
    p.add_argument("--repeats", type=positive_int, default=10, help="random subsets (and splits) per row")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the subsets")
    p.add_argument("--threads", type=nonnegative_int, default=1, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "results", "fd_stability.json"), help="JSON report")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "fd_stability.py"))
