"""A third model that this project did not design: a 2-D checkerboard velocity field trained with
the training code of Meta's ``flow_matching`` library (its ``AffineProbPath`` with the
``CondOTScheduler``, the recipe of the library's 2-D example), so the skip policies are tried
on a model nobody tuned them for.

Time convention (the library's and ours): t = 0 is noise, t = 1 is data,
x_t = (1 - t) x_0 + t x_1, target velocity dx_t = x_1 - x_0.

    pip install -r requirements-bench.txt          # flow-matching, for training only
    python benchmarks/peer_model.py                # trains, writes checkpoints/peer_checkerboard.pt

Loading the shipped file (``load_peer``) needs only torch.
"""
from __future__ import annotations

import argparse
import io
import math
import pickle
import os
import sys
import time
from typing import Optional

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from fastflow.atomic import atomic_write  # noqa: E402
from models.cli import OneLineParser, check_writable, positive_float, positive_int, run_cli, seed_int  # noqa: E402

DEFAULT_PEER = os.path.join(ROOT, "checkpoints", "peer_checkerboard.pt")
FORMAT = "fastflow-peer-checkerboard"


class CheckerboardMLP(nn.Module):
    """v(x, t): the 2-D example's MLP, [x, t] -> 4 hidden layers with SiLU (Swish) -> 2.

    x: (batch, 2); t: (batch,) or a scalar; returns (batch, 2).
    """

    def __init__(self, hidden: int = 512):
        super().__init__()
        self.hidden = hidden
        layers, width = [], 3
        for _ in range(4):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([x, t], dim=1))


def checkerboard(n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n, 2) samples of the example's data: a 4 x 4 checkerboard of unit squares in [-2, 2]^2
    (8 occupied), scaled by 1 / 0.45."""
    u = torch.rand(n, generator=generator) * 4 - 2
    w = torch.rand(n, generator=generator) - 2 * torch.randint(2, (n,), generator=generator)
    v = w + torch.floor(u) % 2
    return torch.stack([u, v], dim=1) / 0.45


def occupied_fraction(x: torch.Tensor) -> float:
    """Share of samples that fall in an occupied square of the checkerboard."""
    u, v = (x * 0.45).unbind(1)
    inside = (u.abs() <= 2) & (v.abs() <= 2)
    occupied = (torch.floor(u) + torch.floor(v)) % 2 == 0
    return (inside & occupied).float().mean().item()


def sliced_w1(a: torch.Tensor, b: torch.Tensor, generator: Optional[torch.Generator] = None,
              directions: int = 256) -> float:
    """Sliced Wasserstein-1 distance between two equal-size 2-D sample sets: the mean over random
    unit directions of the 1-D W1 between the sorted projections."""
    if a.shape != b.shape:
        raise ValueError(f"sample sets must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    theta = torch.rand(directions, generator=generator, dtype=torch.float64) * 2 * math.pi
    d = torch.stack([theta.cos(), theta.sin()], dim=1)                  # (D, 2)
    pa = torch.sort(a.to(torch.float64) @ d.T, dim=0).values             # (n, D)
    pb = torch.sort(b.to(torch.float64) @ d.T, dim=0).values
    return (pa - pb).abs().mean().item()


def train(steps: int, batch_size: int, lr: float, seed: int, hidden: int):
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from tqdm import tqdm
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = CheckerboardMLP(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    path = AffineProbPath(scheduler=CondOTScheduler())
    start, losses = time.time(), []
    for _ in tqdm(range(steps), desc="training"):
        x1 = checkerboard(batch_size, g)
        x0 = torch.randn(batch_size, 2, generator=g)
        t = torch.rand(batch_size, generator=g)
        sample = path.sample(t=t, x_0=x0, x_1=x1)
        loss = (model(sample.x_t, sample.t) - sample.dx_t).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    import importlib.metadata
    info = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "seconds": time.time() - start,
            "final_loss": sum(losses[-100:]) / len(losses[-100:]),
            "library": f"flow_matching {importlib.metadata.version('flow-matching')}"}
    return model, info


def save_peer(model: CheckerboardMLP, info: dict, path: str = DEFAULT_PEER) -> None:
    state = {"format": FORMAT, "config": {"hidden": model.hidden}, "train": info,
             "state_dict": model.state_dict()}
    atomic_write(path, lambda f: torch.save(state, f))


def load_peer(path: str = DEFAULT_PEER) -> CheckerboardMLP:
    """The shipped checkerboard model in eval mode (only torch needed).

    Raises:
        ValueError: naming the path, for a file that is not such a checkpoint.
    """
    try:
        with open(path, "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} checkpoint")
        model = CheckerboardMLP(int(state["config"]["hidden"]))
        model.load_state_dict(state["state_dict"])
    except (ValueError, RuntimeError, KeyError, TypeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: cannot load the peer model ({e})".splitlines()[0]) from None
    return model.eval().requires_grad_(False)


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="peer_model.py", description=__doc__)
    p.add_argument("--steps", type=positive_int, default=3000, help="optimisation steps")
    p.add_argument("--batch-size", type=positive_int, default=2048, help="samples per step")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--hidden", type=positive_int, default=256, help="MLP width")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the weights, data and noise")
    p.add_argument("--out", default=DEFAULT_PEER, help="checkpoint path")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Train, save and check the model; returns 0.

    ``argv``: the flags, or the Namespace ``parse_args`` made of them. A bad flag exits with status 2;
    an --out that cannot be written, or a missing ``flow_matching``, raises OSError before training.
    """
    args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
    check_writable(args.out, "--out")
    try:
        import flow_matching  # noqa: F401 (needed for training only)
    except ImportError as e:
        raise OSError(f"{e}; pip install -r requirements-bench.txt") from None
    model, info = train(args.steps, args.batch_size, args.lr, args.seed, args.hidden)
    save_peer(model, info, args.out)
    import fastflow as ff
    g = torch.Generator().manual_seed(1)
    x = ff.EulerSampler(100).sample(model.eval(), torch.randn(10_000, 2, generator=g)).x
    data = checkerboard(10_000, g)
    print(f"{info}\nEuler-100: occupied {occupied_fraction(x):.4f}, sliced W1 to data {sliced_w1(x, data, g):.4f}; "
          f"data vs data: {sliced_w1(checkerboard(10_000, g), data, g):.4f}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "peer_model.py"))
