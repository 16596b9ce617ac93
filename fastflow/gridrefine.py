"""Tune a time grid by coordinate descent on the deviation its sampler actually makes.

Time convention: t = 0 noise, t = 1 data. The dynamic programs of ``fastflow.optgrid`` cut a grid
that minimises a *sum of one-step errors* along a reference run. The error that matters is the
final one,

    d(t_0, ..., t_K) = ||x_K - x_ref|| / ||x_ref||,

and a multistep rule does not split it into steps: each step reuses earlier model outputs, so
moving one time changes every later step. ``refine_times`` therefore measures d itself. It moves
one interior time at a time,

    t_i  ->  t_i + s (t_{i+1} - t_i)   or   t_i - s (t_i - t_{i-1}),

keeps the first move that lowers d, halves s after a sweep over all interior times that kept none,
and stops after ``max_evals`` evaluations of d or once s < ``min_step``. The end points never move
and, as s < 1, the times stay strictly increasing. Each evaluation is one replay of the sampler
(K model calls on the calibration batch in ``fastflow.choice``), so the search costs at most
``max_evals`` K calls and returns a grid no worse than the one it started from on that batch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch

from . import checks

__all__ = ["Refined", "refine_times"]


class Refined(NamedTuple):
    """The result of ``refine_times``: the best grid found, its d and how many times d was evaluated.

    Raises:
        Nothing of its own (a plain named tuple).
    """

    times: torch.Tensor
    deviation: float
    evals: int


def refine_times(times: Sequence[float] | torch.Tensor, deviation: Callable[[torch.Tensor], float],
                 max_evals: int, step: float = 0.25, min_step: float = 1 / 64,
                 start_deviation: Optional[float] = None) -> Refined:
    """Coordinate descent on the interior times of a grid (module docstring).

    Args:
        times: the start, strictly increasing (float64 internally); its first and last times stay.
        deviation: grid (float64 tensor) -> d, the number to lower; called on ``times`` first unless
            ``start_deviation`` gives its d.
        max_evals: most calls of ``deviation``, that first one included (>= 1).
        step: the first s, the fraction of the gap to a neighbour a time moves by, in (0, 1).
        min_step: stop once s falls below it, in (0, step].
        start_deviation: d of ``times`` when already measured (saves that first call).

    Returns:
        ``Refined(times, deviation, evals)``: the grid with the least d seen (the start if no move
        lowered it) and the number of ``deviation`` calls made.

    Raises:
        ValueError: for fewer than 2 times, times that do not increase strictly or are not finite,
            ``max_evals`` < 1, or a step outside its range.
    """
    grid = torch.as_tensor(times, dtype=torch.float64).detach().clone().flatten()
    if grid.numel() < 2 or not torch.isfinite(grid).all() or not (grid[1:] > grid[:-1]).all():
        raise ValueError(f"times must be at least 2 finite, strictly increasing values, got {grid.tolist()}")
    checks.int_in("max_evals", max_evals, 1)
    if not 0 < step < 1 or not 0 < min_step <= step:
        raise ValueError(f"need 0 < min_step <= step < 1, got step={step!r}, min_step={min_step!r}")
    if start_deviation is None:
        best, evals = float(deviation(grid.clone())), 1
    else:
        best, evals = float(start_deviation), 0
    while step >= min_step and evals < max_evals:
        moved = False
        for i in range(1, grid.numel() - 1):
            for gap in (grid[i + 1] - grid[i], grid[i - 1] - grid[i]):  # towards the later, then the earlier
                if evals >= max_evals:
                    break
                trial = grid.clone()
                trial[i] = grid[i] + step * gap
                d = float(deviation(trial.clone()))
                evals += 1
                if d < best:
                    grid, best, moved = trial, d, True
                    break
        if not moved:
            step /= 2
    return Refined(grid, best, evals)
