"""Time grids optimised from a reference run: pick K of its T + 1 times so that Euler, stepping only
at those times, tracks the reference trajectory best (in the spirit of Optimal Stepsize
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
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import checks

__all__ = ["euler_step_errors", "optimal_grid", "optimal_times"]


def euler_step_errors(times: Sequence[float], states: Sequence[torch.Tensor]) -> torch.Tensor:
    """(T + 1, T + 1) float64 table e[i, j] of one Euler step from point i to point j along an Euler
    reference run with states x_0..x_T at ``times`` (module docstring); +inf where j <= i.

    Raises:
        ValueError: for fewer than 3 points, or states and times of different counts.
    """
    t = torch.as_tensor(times, dtype=torch.float64)
    if len(states) != len(t) or len(t) < 3:
        raise ValueError(f"need as many states as times, at least 3, got {len(states)} and {len(t)}")
    x = torch.stack([s.detach().double().reshape(-1) for s in states])     # (T + 1, n), on the states' device
    dt = (t[1:] - t[:-1]).to(x.device)
    v = (x[1:] - x[:-1]) / dt[:, None]                                   # (T, n): v_i of the reference run
    T = len(t) - 1
    err = torch.full((T + 1, T + 1), float("inf"), dtype=torch.float64)
    norms = x.norm(dim=1).clamp_min(1e-30)
    tt = t.to(x.device)
    for i in range(T):  # row i: every step i -> j at once
        pred = x[i] + (tt[i + 1:] - tt[i])[:, None] * v[i]              # (T - i, n)
        err[i, i + 1:] = ((x[i + 1:] - pred).norm(dim=1) / norms[i + 1:]).cpu()
    return err


def optimal_grid(errors: torch.Tensor, calls: int) -> list[int]:
    """Indices 0 = i_0 < ... < i_K = T of the K-step grid with the least summed step error
    (``errors[i, j]`` for a step from i to j), by dynamic programming.

    Raises:
        ValueError: for a table that is not (T + 1, T + 1), or ``calls`` that is not an int in [1, T].
    """
    n = errors.shape[0]
    if errors.dim() != 2 or errors.shape[1] != n or n < 2:
        raise ValueError(f"errors must be a square (T + 1, T + 1) table, got {tuple(errors.shape)}")
    T = n - 1
    K = checks.int_in("calls", calls, 1, T)
    e = errors.double().cpu()
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


def optimal_times(times: Sequence[float], states: Sequence[torch.Tensor], calls: int) -> torch.Tensor:
    """The (K + 1,) times of the best K-step Euler grid along a reference Euler run
    (``euler_step_errors`` then ``optimal_grid``), ready for ``EulerSampler(times=...)``.

    Raises:
        ValueError: as ``euler_step_errors`` and ``optimal_grid``.
    """
    idx = optimal_grid(euler_step_errors(times, states), calls)
    return torch.as_tensor(times, dtype=torch.float64)[idx]
