"""Measure the FastFlow deviation bound ||x_T^S - x_T|| = O(|S| / T^(p+2)) on the mixture flow.

Prints, for order p = 1 and 2, the RMS deviation between extrapolated Euler with a fixed
skip set S and full Euler from the same noise, the fitted slope in T at fixed |S| = 4
(skips at t = 0.2, 0.4, 0.6, 0.8), the constant dev * T^(p+2) / |S|, and the slope in |S|
at T = 400 (skips at steps 160, 164, ...).

    python benchmarks/theorem.py
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from models.cli import OneLineParser, run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """The script takes no flags; --help prints the description above, anything else is a bad flag."""
    return OneLineParser(prog="theorem.py", description=__doc__).parse_args(argv)


def main(args=None):
    flow = ff.toy.GaussianMixtureFlow([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]], [0.5, 0.4, 0.6])
    x0 = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def dev(T, S, order):
        full = ff.EulerSampler(T).sample(flow, x0).x
        return (ff.extrapolated_euler(flow, x0, T, S, order=order).x - full).square().sum(1).mean().sqrt().item()

    for order in (1, 2):
        Ts = [50, 100, 200, 400]
        devs = [dev(T, [round(f * T) for f in (0.2, 0.4, 0.6, 0.8)], order) for T in Ts]
        slope = np.polyfit(np.log(Ts), np.log(devs), 1)[0]
        print(f"order {order}: |S| = 4, slope in T = {slope:.2f} (bound: {-(order + 2)})")
        for T, d in zip(Ts, devs):
            print(f"  T = {T:4d}  dev = {d:.3e}  dev * T^{order + 2} / |S| = {d * T ** (order + 2) / 4:.1f}")
        sizes = [1, 2, 4, 8, 16]
        devs = [dev(400, [160 + 4 * i for i in range(n)], order) for n in sizes]
        slope = np.polyfit(np.log(sizes), np.log(devs), 1)[0]
        print(f"  T = 400, |S| = {sizes}: dev = {['%.2e' % d for d in devs]}, slope in |S| = {slope:.2f}")


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "theorem.py"))
