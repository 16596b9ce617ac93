"""Optimal skip plans: which steps to extrapolate, for a budget of model calls.

Given the error table of a full run (``fastflow.errors``), the planned error of a skip set S
is the sum of the table errors of its skipped steps, each taken from the real steps that
precede it in the plan:

    cost(S) = sum_{j in S} table[k_j, g_1, ..., g_p, j - k_j],

k_j the newest real step before j and g the gaps back to the p older real steps. By the
deviation bound, |x_T^S - x_T| <= e^L dt sum_{j in S} |v_hat_j - v_j|, so this sum (in
relative units) is what a plan should minimise.

**The dynamic program.** A state is the last p + 1 real steps, written (k, g_1..g_p); steps
0..p are always real and so is step T - 1. From state (k, g) with c calls made, a run of
m = 0..R skips costs sum_{i=1..m} table[k, g, i] and leads to state (k + m + 1, m + 1,
g_1..g_{p-1}) with c + 1 calls. F[k, g, c] is the least cost of reaching that state; each
target (k', m + 1) has one predecessor step k' - m - 1, so one pass over k in increasing
order fills F, minimising over the dropped gap g_p. Cost: T (R + 1) vectorised updates of
(R + 2)^p x (T + 1) numbers; memory T (R + 2)^p (T + 1).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from . import checks
from .errors import table_shape

__all__ = ["plan_skips", "planned_costs", "plan_cost", "min_calls"]


def min_calls(steps: int, order: int = 1, max_run: int = 4) -> int:
    """Fewest model calls any plan can make: steps 0..p and T - 1 real, runs of at most R skips.

    Each of the K - p - 1 real steps from p to T - 2 can start a run of at most R skips,
    so T - K <= (K - p - 1) R, i.e. K >= (T + (p + 1) R) / (R + 1); and K >= p + 2.

    Raises:
        Nothing of its own (the arguments are not validated).
    """
    need = -(-(steps + (order + 1) * max_run) // (max_run + 1))
    return max(need, order + 2)


def _check(errors: torch.Tensor, steps: int, order: int, max_run: int) -> torch.Tensor:
    """The table cut down to runs of at most ``max_run``, as float64 on the CPU."""
    checks.order(order)
    checks.int_in("steps", steps, order + 3)  # steps 0..p and T - 1 are real: nothing to plan below
    checks.int_in("max_run", max_run, 1)
    if not isinstance(errors, torch.Tensor):
        errors = torch.as_tensor(errors)
    if errors.dim() != order + 2 or errors.shape[0] != steps:
        raise ValueError(f"error table has shape {tuple(errors.shape)}; for steps={steps}, order={order} it "
                         f"must be {table_shape(steps, order, max_run)} (see fastflow.errors)")
    width = errors.shape[1]
    if any(n != width for n in errors.shape[1:]) or width < max_run + 2:
        raise ValueError(f"error table has shape {tuple(errors.shape)}: its gap and lead axes must all have "
                         f"length >= max_run + 2 = {max_run + 2} (expected {table_shape(steps, order, max_run)})")
    cut = (slice(None),) + (slice(0, max_run + 2),) * (order + 1)
    errors = errors[cut].to(torch.float64).cpu()
    if int(torch.isnan(errors).sum()) or int((errors < 0).sum()):
        raise ValueError("error table has NaN or negative entries")
    return errors


def _forward(errors: torch.Tensor, steps: int, order: int, max_run: int, max_calls: int):
    """Fill F (least cost per state and call count c <= max_calls) and the argmin of the dropped gap."""
    p, R, T, G, C = order, max_run, steps, max_run + 2, max_calls + 1
    skipped = torch.cumsum(errors[..., 1:R + 1], dim=-1)                  # leads 1..m: the skipped steps
    run_cost = torch.cat([torch.zeros_like(skipped[..., :1]), skipped], dim=-1)  # (T, G..., R+1), m = 0..R
    F = torch.full((T,) + (G,) * p + (C,), float("inf"), dtype=torch.float64)
    arg = torch.zeros((T, G) + (G,) * (p - 1) + (C,), dtype=torch.long)
    F[(p,) + (1,) * p + (p + 1,)] = 0.0                                   # reals 0..p, gaps 1, p+1 calls
    for k in range(p, T - 1):
        for m in range(0, min(R, T - 2 - k) + 1):
            cand = F[k] + run_cost[k, ..., m, None]                       # (G..., C)
            best, which = cand.min(dim=p - 1)                             # drop the oldest gap g_p
            F[k + m + 1, m + 1, ..., 1:] = best[..., :-1]                 # one more call
            arg[k + m + 1, m + 1, ..., 1:] = which[..., :-1]
    return F, arg


def planned_costs(errors: torch.Tensor, steps: int, order: int = 1, max_run: int = 4) -> torch.Tensor:
    """(T + 1,) least planned error for every number of calls K (+inf where no plan exists).

    Entry K is min over plans S with T - |S| = K of cost(S) (module docstring), float64 on the
    CPU; ``errors`` is an error table of shape ``table_shape(steps, order, R)``, R >= max_run.

    Raises:
        ValueError: for an ``order`` that is not an int in [1, 16], a ``steps`` that is not an int
            >= order + 3, a ``max_run`` that is not an int >= 1, a table of the wrong shape, or a
            table with NaN or negative entries.
    """
    errors = _check(errors, steps, order, max_run)
    F, _ = _forward(errors, steps, order, max_run, steps)
    return F[steps - 1].reshape(-1, steps + 1).min(dim=0).values


def plan_skips(errors: torch.Tensor, steps: int, calls: int, order: int = 1, max_run: int = 4) -> list[int]:
    """The skip set with the least summed table error among all plans making ``calls`` model calls.

    Args:
        errors: error table of a full run, shape ``table_shape(steps, order, R)`` for some R >= max_run.
        steps: T.
        calls: K, the number of real steps (model calls) of the plan.
        order: extrapolation order p.
        max_run: R, the longest run of consecutive skipped steps.

    Returns:
        Sorted skipped step indices; T - K of them. Ties go to the plan found first.

    Raises:
        ValueError: for an ``order`` that is not an int in [1, 16], a ``steps`` that is not an int
            >= order + 3, a ``max_run`` that is not an int >= 1, a table of the wrong shape or with
            NaN/negative entries, a ``calls`` that is not an int in [min_calls(T, p, R), T], or
            when no plan with ``calls`` calls has a finite planned error.
    """
    errors = _check(errors, steps, order, max_run)
    lo = min_calls(steps, order, max_run)
    if not checks.is_int(calls) or not lo <= calls <= steps:
        raise ValueError(f"calls must be an int in [{lo}, {steps}] for steps={steps}, order={order}, "
                         f"max_run={max_run}, got {calls!r}")
    F, arg = _forward(errors, steps, order, max_run, calls)
    last = F[steps - 1, ..., calls]                                       # (G,)*p
    flat = int(torch.argmin(last.reshape(-1)))
    if not math.isfinite(float(last.reshape(-1)[flat])):
        raise ValueError(f"no plan with {calls} calls has a finite planned error")
    gaps = list(torch.unravel_index(torch.tensor(flat), last.shape))
    gaps = [int(g) for g in gaps]
    k, c, skipped = steps - 1, calls, []
    while k > order:                                                      # walk back to the forced reals
        prev_gap = int(arg[(k, gaps[0]) + tuple(gaps[1:]) + (c,)])
        k_prev = k - gaps[0]
        skipped.extend(range(k_prev + 1, k))
        gaps = gaps[1:] + [prev_gap]
        k, c = k_prev, c - 1
    return sorted(skipped)


def plan_cost(errors: torch.Tensor, steps: int, skip: Iterable[int], order: int = 1) -> float:
    """Summed table error of an arbitrary skip set (the cost ``plan_skips`` minimises).

    cost(S) = sum_{j in S} table[k_j, g_1..g_p, j - k_j] (module docstring), as a Python float;
    indices in ``skip`` outside 0..T-1 are ignored.

    Raises:
        ValueError: if a skipped step lacks p + 1 real steps before it, or if a run is longer
            than the table covers (its lead axis).
    """
    skip = set(skip)
    errors = torch.as_tensor(errors, dtype=torch.float64)
    reals, total = [], 0.0
    for j in range(steps):
        if j not in skip:
            reals.append(j)
            continue
        if len(reals) < order + 1:
            raise ValueError(f"cannot skip step {j}: it has only {len(reals)} real steps before it")
        nodes = reals[::-1][:order + 1]
        lead = j - nodes[0]
        gaps = [nodes[r] - nodes[r + 1] for r in range(order)]
        if lead >= errors.shape[-1] or any(g >= errors.shape[1] for g in gaps):
            raise ValueError(f"step {j} lies beyond what the error table covers (lead {lead}, gaps {gaps})")
        total += float(errors[(nodes[0], *gaps, lead)])
    return total
