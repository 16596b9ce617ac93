"""Does the FastFlow bandit learn? Arm frequencies against uniform on a toy flow.

For each setting, a FastFlowSampler (T = 50) is warmed up on `--warmup` batches of the
Gaussian-mixture flow, then measured on `--eval` fresh batches. Reported per setting:
mean NFE and RMS deviation from Euler-50 on the evaluation batches, and, over the last
half of the warm-up decisions, the total-variation distance between each step's arm
frequencies and the uniform distribution over its available arms (0 = the bandit only
explores, 1 - 1/n_arms = it always plays one arm), averaged over steps.

    python benchmarks/toy_bandit.py --out results/toy_bandit.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from models.cli import OneLineParser, check_writable, nonnegative_int, positive_int, run_cli, seed_int  # noqa: E402


def mixture():
    return ff.toy.GaussianMixtureFlow([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]], [0.3, 0.2, 0.4])


def tv_from_uniform(decisions, arms, steps):
    by_step = defaultdict(Counter)
    for k, m in decisions:
        by_step[k][m] += 1
    tvs = []
    for k, counts in by_step.items():
        avail = [m for m in arms if k + m + 1 <= steps - 1]
        n = sum(counts.values())
        tvs.append(0.5 * sum(abs(counts[m] / n - 1 / len(avail)) for m in avail))
    return sum(tvs) / max(len(tvs), 1)


def run(setting, args):
    flow, T = mixture(), 50
    sampler = ff.FastFlowSampler(T, policy="paper", generator=torch.Generator().manual_seed(args.seed), **setting)
    decisions = []
    for i in range(args.warmup):
        x0 = torch.randn(args.batch, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1000 + i))
        res = sampler.sample(flow, x0)
        if i >= args.warmup // 2:
            decisions += res.info["decisions"]
    nfe, dev, euler_dev = [], [], []
    for i in range(args.eval):
        x0 = torch.randn(args.batch, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        res = sampler.sample(flow, x0)
        ref = ff.EulerSampler(T).sample(flow, x0).x
        nfe.append(res.nfe)
        dev.append((res.x - ref).square().sum(1).mean().sqrt().item())
        euler_dev.append((ff.EulerSampler(res.nfe).sample(flow, x0).x - ref).square().sum(1).mean().sqrt().item())
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"setting": setting, "mu": sampler.mu, "mean_nfe": mean(nfe), "rms_dev_vs_euler50": mean(dev),
            "euler_same_nfe_rms_dev": mean(euler_dev),
            "tv_from_uniform": tv_from_uniform(decisions, sampler.spec.arms, T),
            "mean_arm": mean([m for _, m in decisions]) if decisions else 0.0}


def main(args):
    """Run every setting and write --out (checked first)."""
    if args.out:
        check_writable(args.out, "--out")
    settings = [
        {"normalize_rewards": False},
        {"normalize_rewards": True},
        {"normalize_rewards": False, "mu": 0.1},
        {"normalize_rewards": True, "mu": 0.1},
        {"normalize_rewards": True, "mu": 0.1, "bandit": "epsilon-greedy"},
        {"normalize_rewards": True, "mu": 0.1, "bandit": "thompson"},
        {"normalize_rewards": True, "mu": 0.1, "order": 2},
    ]
    rows = [run(s, args) for s in settings]
    print(f"{'setting':58s} {'mu':>9s} {'NFE':>6s} {'dev':>8s} {'Euler@NFE':>9s} {'TV':>5s} {'arm':>5s}")
    for r in rows:
        print(f"{json.dumps(r['setting']):58s} {r['mu']:9.2e} {r['mean_nfe']:6.1f} {r['rms_dev_vs_euler50']:8.4f} "
              f"{r['euler_same_nfe_rms_dev']:9.4f} {r['tv_from_uniform']:5.2f} {r['mean_arm']:5.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="toy_bandit.py", description=__doc__)
    p.add_argument("--warmup", type=nonnegative_int, default=60,
                   help="batches each bandit learns on before it is measured")
    p.add_argument("--eval", type=positive_int, default=10, help="evaluation batches per setting")
    p.add_argument("--batch", type=positive_int, default=256, help="samples per batch")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the bandits' generator")
    p.add_argument("--out", default="results/toy_bandit.json", help="result file ('' = do not write one)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "toy_bandit.py"))
