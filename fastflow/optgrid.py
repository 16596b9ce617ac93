"""Time grids optimised from a reference run: pick K of its T + 1 times so that a base (Euler, AB2,
UniPC), stepping only at those times, tracks the reference trajectory best (in the spirit of Optimal Stepsize
Distillation, Pei et al. 2025).

Time convention: t = 0 noise, t = 1 data. A reference run (say Euler with T steps, ``trace=True``)
gives states x_0..x_T at t_0..t_T and, for Euler, its velocities v_k = (x_{k+1} - x_k) / dt_k. One
Euler step from grid point i to grid point j then makes the local error

    e[i, j] = ||x_j - x_i - (t_j - t_i) v_i|| / ||x_j||        (relative, over the batch),

and a grid i_0 = 0 < i_1 < ... < i_K = T costs sum_m e[i_m, i_{m+1}]. **We minimise this sum of
local errors**, not the final error of the K-step run: the final error is the local errors carried
forward by the flow (each amplified by at most e^{L (1 - t)}), so their sum bounds it up to that
factor, and every e[i, j] is measured from the one reference run, where scoring a candidate by its
final error would need a run of the model per candidate. A dynamic program over (last point, steps
used) finds the exact minimum in O(K T^2) on the host, from a (T + 1) x (T + 1) table.

**Two-step bases.** An AB2 or UniPC-2 step from i to j also uses the output at the grid point h
before i, so its local error is a three-index table e[h, i, j] (``step_errors``): the step is
taken from the reference state x_i with the reference outputs at h, i (and, for UniPC's corrector,
at j), exactly as the sampler would take it there, lower orders at the start included (the first
step, e[0, 0, j], has no history; from t_0 = 0 UniPC's second is first order too). The dynamic
program then runs over pairs (h, i) of last grid points: about K T^3 / 6 additions (T = 200, K = 10:
0.17 s on one CPU thread; T = 50: 0.02 s). The table's step weights are computed once per grid, in
Python (3 s at T = 50, growing as T^3: keep two-step tables to T <= 100). A grid is only as good as
the base it was cut for: on the MNIST DiT at K = 8, UniPC on two Euler-optimal grids cut from two
references (first steps 0.02 and 0.01) lands 37.6 and 32.1 dB from the exact flow (100 digits).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

from . import checks
from .solvers import ab_coefficients
from .unipc import unipc_steps

__all__ = ["BASES", "euler_step_errors", "optimal_grid", "optimal_times", "step_errors", "trajectory_velocities"]

BASES = ("euler", "ab2", "unipc")  # the bases a grid can be cut for


def euler_step_errors(times: Sequence[float], states: Sequence[torch.Tensor],
                      velocities: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(T + 1, T + 1) float64 table e[i, j] of one Euler step from point i to point j along a
    reference run with states x_0..x_T at ``times`` (module docstring); +inf where j <= i. The
    velocities are ``velocities`` ((T + 1, ...) like the states) or else the run's own forward
    differences, exact for an Euler run.

    Raises:
        ValueError: for fewer than 3 points, or states and times of different counts.
    """
    t = torch.as_tensor(times, dtype=torch.float64)
    if len(states) != len(t) or len(t) < 3:
        raise ValueError(f"need as many states as times, at least 3, got {len(states)} and {len(t)}")
    x = torch.stack([s.detach().double().reshape(-1) for s in states])     # (T + 1, n), on the states' device
    dt = (t[1:] - t[:-1]).to(x.device)
    if velocities is None:
        v = (x[1:] - x[:-1]) / dt[:, None]                               # (T, n): v_i of the reference run
    else:
        v = velocities.detach().double().reshape(len(t), -1)[:-1].to(x.device)
    T = len(t) - 1
    err = torch.full((T + 1, T + 1), float("inf"), dtype=torch.float64)
    norms = x.norm(dim=1).clamp_min(1e-30)
    tt = t.to(x.device)
    for i in range(T):  # row i: every step i -> j at once
        pred = x[i] + (tt[i + 1:] - tt[i])[:, None] * v[i]              # (T - i, n)
        err[i, i + 1:] = ((x[i + 1:] - pred).norm(dim=1) / norms[i + 1:]).cpu()
    return err


def optimal_grid(errors: torch.Tensor, calls: int) -> list[int]:
    """Indices 0 = i_0 < ... < i_K = T of the K-step grid with the least summed step error, by
    dynamic programming: ``errors[i, j]`` for a one-step base, or ``errors[h, i, j]`` for a
    two-step one (``step_errors``; ``errors[0, 0, j]`` the first step).

    Raises:
        ValueError: for a table that is not (T + 1, T + 1) or (T + 1,) * 3, or ``calls`` that is
            not an int in [1, T].
    """
    n = errors.shape[0]
    if errors.dim() not in (2, 3) or any(s != n for s in errors.shape) or n < 2:
        raise ValueError(f"errors must be a square (T + 1, T + 1) or (T + 1, T + 1, T + 1) table, "
                         f"got {tuple(errors.shape)}")
    T = n - 1
    K = checks.int_in("calls", calls, 1, T)
    e = errors.double().cpu()
    if e.dim() == 3:
        return _pair_grid(e, K)
    best = torch.full((K + 1, n), float("inf"), dtype=torch.float64)   # best[c, j]: c steps ending at j
    back = torch.zeros((K + 1, n), dtype=torch.long)
    best[0, 0] = 0.0
    for c in range(1, K + 1):
        total = best[c - 1][:, None] + e                                 # (from i, to j)
        best[c], back[c] = total.min(dim=0)
    path, j = [T], T
    for c in range(K, 0, -1):
        j = int(back[c, j])
        path.append(j)
    return path[::-1]


def _pair_grid(e: torch.Tensor, K: int) -> list[int]:
    """``optimal_grid`` for a two-step table: the state is the pair (h, i) of the last two points.
    Only h < i < j is ever read (and e[0, 0, j], the first step), one middle point i at a time:
    about K T^3 / 6 additions."""
    n = e.shape[0]
    T = n - 1
    inf = float("inf")
    best = torch.full((n, n), inf, dtype=torch.float64)      # best[i, j]: the last two points are i, j
    best[0, 1:] = e[0, 0, 1:]                                  # after the first step 0 -> j
    backs = []
    for _ in range(K - 1):
        new = torch.full((n, n), inf, dtype=torch.float64)
        back = torch.zeros((n, n), dtype=torch.long)
        for i in range(1, T):
            total = best[:i, i, None] + e[:i, i, i + 1:]      # (h < i, j > i)
            new[i, i + 1:], back[i, i + 1:] = total.min(dim=0)
        best = new
        backs.append(back)
    i = int(best[:, T].argmin())
    path, j = [T, i], T
    for back in reversed(backs):                              # back[i, j] = h
        i, j = int(back[i, j]), i
        path.append(i)
    return path[::-1]


def step_errors(times: Sequence[float], states: Sequence[torch.Tensor], base: str = "euler",
                dims: int = 8192, seed: int = 0, velocities: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The local-error table of one step of ``base`` (``BASES``) along a reference run with states
    x_0..x_T at ``times``: ``euler_step_errors`` for "euler"; for "ab2" and "unipc" (UniPC-2
    with its corrector, as ``UniPCSampler``) the (T + 1,) * 3 table e[h, i, j] of the module
    docstring, +inf off h < i < j (and off the first step e[0, 0, j]), relative to ||x_j||.

    The velocities are ``velocities`` ((T + 1, ...) like the states, e.g. ``trajectory_velocities``)
    or else the run's own, v_k = (x_{k+1} - x_k) / dt_k (exact for an Euler run). Norms
    are taken on at most ``dims`` coordinates drawn with ``seed`` (all of them when fewer): a
    (T + 1)^3 / 6 table over a whole batch would cost far more than the model calls it saves.

    Raises:
        ValueError: for an unknown base, or as ``euler_step_errors``.
    """
    if base not in BASES:
        raise ValueError(f"unknown grid base {base!r}, choose from {list(BASES)}")
    if base == "euler":
        return euler_step_errors(times, states, velocities)
    t = [float(s) for s in times]
    if len(states) != len(t) or len(t) < 3:
        raise ValueError(f"need as many states as times, at least 3, got {len(states)} and {len(t)}")
    x = torch.stack([s.detach().double().reshape(-1) for s in states])
    pick = None
    if x.shape[1] > dims:
        pick = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))[:dims]
        x = x[:, pick.to(x.device)]
    T = len(t) - 1
    dt = torch.tensor([t[k + 1] - t[k] for k in range(T)], dtype=torch.float64, device=x.device)
    if velocities is None:
        v = (x[1:] - x[:-1]) / dt[:, None]                          # v_0..v_{T-1}
    else:
        v = velocities.double().reshape(len(t), -1)[:T]
        v = v[:, pick.to(v.device)] if x.shape[1] < v.shape[1] else v
    one_minus = torch.tensor([1.0 - s for s in t[:T]], dtype=torch.float64, device=x.device)
    u = v if base == "ab2" else x[:T] + one_minus[:, None] * v      # the outputs the base combines
    norms = x.norm(dim=1).clamp_min(1e-30).cpu()
    err = torch.full((T + 1, T + 1, T + 1), float("inf"), dtype=torch.float64)
    W = _weight_table(tuple(t), base).to(x.device)                  # (h, i, j, 4) on x_i, u_i, u_h, u_j
    for i in range(T):
        hs = [0] if i == 0 else list(range(i))                     # i = 0: the first step (h = 0 stands for none)
        for j in range(i + 1, T + 1):
            w = W[hs, i, j]
            uj = u[j] if j < T else torch.zeros_like(x[0])
            pred = (w[:, :1] * x[i] + w[:, 1:2] * u[i] + w[:, 3:4] * uj) + w[:, 2:3] * u[hs]
            e = ((pred - x[j]).norm(dim=1) / norms[j]).cpu()
            if i == 0:
                err[0, 0, j] = e[0]
            else:
                err[hs, i, j] = e
    return err


def trajectory_velocities(times: Sequence[float], states: Sequence[torch.Tensor]) -> torch.Tensor:
    """dx/dt at every state of an accurate run (any sampler), by second-order finite differences on
    its (possibly non-uniform) grid: for ``step_errors`` along a reference that is not Euler.

    Raises:
        ValueError: for fewer than 3 points, or states and times of different counts.
    """
    t = torch.as_tensor(times, dtype=torch.float64)
    if len(states) != len(t) or len(t) < 3:
        raise ValueError(f"need as many states as times, at least 3, got {len(states)} and {len(t)}")
    x = torch.stack([s.detach().double() for s in states])
    shape = (-1,) + (1,) * (x.dim() - 1)
    ta, tb, tc = t[:-2].view(shape), t[1:-1].view(shape), t[2:].view(shape)
    xa, xb, xc = x[:-2], x[1:-1], x[2:]
    v = torch.empty_like(x)
    # the derivative of the parabola through three neighbours, at its middle, start and end point
    v[1:-1] = (xa * (tb - tc) / ((ta - tb) * (ta - tc)) + xb * (2 * tb - ta - tc) / ((tb - ta) * (tb - tc))
               + xc * (tb - ta) / ((tc - ta) * (tc - tb)))
    for at, (i, j, k) in ((0, (0, 1, 2)), (-1, (-1, -2, -3))):  # the ends: the parabola's slope at its own end
        a, b, c = t[i], t[j], t[k]
        v[at] = (x[i] * (2 * a - b - c) / ((a - b) * (a - c)) + x[j] * (a - c) / ((b - a) * (b - c))
                 + x[k] * (a - b) / ((c - a) * (c - b)))
    return v


@functools.lru_cache(maxsize=8)
def _weight_table(times: tuple, base: str) -> torch.Tensor:
    """(n, n, n, 4) float64 weights of ``base``'s step from i to j after h (``_ab2_weights``,
    ``_unipc_weights``; the first step at h = i = 0), computed once per grid: they depend on the
    times only."""
    n, t = len(times), list(times)
    weights = _ab2_weights if base == "ab2" else _unipc_weights
    W = torch.zeros(n, n, n, 4, dtype=torch.float64)
    for j in range(1, n):
        W[0, 0, j] = torch.tensor(weights(t, None, 0, j), dtype=torch.float64)
        for i in range(1, j):
            W[:i, i, j] = torch.tensor([weights(t, h, i, j) for h in range(i)], dtype=torch.float64)
    return W


def _ab2_weights(t: list, h, i: int, j: int) -> tuple:
    """AB2 (Euler without history) from i to j as weights on (x_i, v_i, v_h, -)."""
    dt = t[j] - t[i]
    if h is None:
        return (1.0, dt, 0.0, 0.0)
    b0, b1 = ab_coefficients([t[i], t[h]], t[i], t[j])
    return (1.0, dt * b0, dt * b1, 0.0)


def _unipc_weights(t: list, h, i: int, j: int) -> tuple:
    """UniPC-2's (corrected, unless j ends the grid) step from i to j as weights on (x_i, D_i, D_h, D_j)."""
    nodes = ([] if h is None else [t[h]]) + [t[i], t[j]] + ([] if t[j] >= 1.0 else [1.0])
    k = 0 if h is None else 1
    rule = unipc_steps(nodes, 2, corrector=True, lower_order_final=False)[k]
    if rule.corrector:            # (on D_j, on D_i, on D_h)
        c = rule.corrector + (0.0,) * (3 - len(rule.corrector))
        return (rule.scale, c[1], c[2], c[0])
    p = rule.predictor + (0.0,) * (2 - len(rule.predictor))
    return (rule.scale, p[0], p[1], 0.0)


def optimal_times(times: Sequence[float], states: Sequence[torch.Tensor], calls: int,
                  base: str = "euler", velocities: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The (K + 1,) times of the best K-step grid for ``base`` along a reference run
    (``step_errors`` then ``optimal_grid``), ready for ``EulerSampler(times=...)`` and the like.

    Raises:
        ValueError: as ``step_errors`` and ``optimal_grid``.
    """
    idx = optimal_grid(step_errors(times, states, base, velocities=velocities), calls)
    return torch.as_tensor(times, dtype=torch.float64)[idx]
