"""Polynomial extrapolation of the velocity in time from past real evaluations.

Given the p + 1 most recent real evaluations (t_0, v_0), ..., (t_p, v_p) of the model,
ordered newest first, the order-p estimate at time t is the Newton interpolating
polynomial

    v_hat(t) = f[t_0] + (t - t_0) f[t_0, t_1] + (t - t_0)(t - t_1) f[t_0, t_1, t_2] + ...

with divided differences f[t_i..t_j] = (f[t_i..t_{j-1}] - f[t_{i+1}..t_j]) / (t_i - t_j).
Order 1 is v_hat(t) = v_0 + (t - t_0) (v_0 - v_1) / (t_0 - t_1). The coefficients come
from the actual times, so the rule is exact on velocities that are polynomials in t of
degree <= p, whatever the spacing of the evaluations (for example after a run of skips).
"""
from __future__ import annotations

from collections import deque
from typing import Sequence

import torch

from . import checks

__all__ = ["newton_extrapolate", "History", "check_order"]


def check_order(order: int) -> int:
    """Validate an extrapolation order p (an int in [1, 16]) and return it (``fastflow.checks.order``).

    Raises:
        ValueError: for a bool, a non-int or an int outside [1, 16].
    """
    return checks.order(order)


def newton_extrapolate(times: Sequence[float], values: Sequence[torch.Tensor], t: float) -> torch.Tensor:
    """Evaluate at ``t`` the polynomial through (times[i], values[i]).

    Args:
        times: p + 1 distinct times, oldest first (as they were recorded).
        values: p + 1 tensors of one shape, values[i] taken at times[i].
        t: where to evaluate.

    Returns:
        Tensor of the shape of values[0].

    Raises:
        ValueError: for empty or mismatched ``times`` and ``values``, or repeated times.
    """
    if len(times) != len(values) or len(times) == 0:
        raise ValueError(f"need matching non-empty times and values, got {len(times)} and {len(values)}")
    nodes = list(times)[::-1]          # newest first: t_0 is the latest evaluation
    dd = list(values)[::-1]            # dd[i] becomes f[t_0, ..., t_i]
    p = len(nodes) - 1
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"extrapolation times must be distinct, got {nodes}")
    for j in range(1, p + 1):
        for i in range(p, j - 1, -1):
            dd[i] = (dd[i - 1] - dd[i]) / (nodes[i - j] - nodes[i])
    out = dd[p]
    for i in range(p - 1, -1, -1):     # Horner on the Newton form
        out = dd[i] + (t - nodes[i]) * out
    return out


class History:
    """The last ``size`` real evaluations (t, v), oldest first, in a bounded deque.

    Times are the model's times t_k (t = 0 noise, t = 1 data, or any affine rescaling of them:
    extrapolation is unchanged by one); values are velocities of one shape (batch, ...).

    Args:
        size: how many evaluations to keep (``order + 1`` for extrapolation of order p).

    Raises:
        ValueError: for a negative ``size`` (from ``collections.deque``).
    """

    def __init__(self, size: int):
        self.times: deque[float] = deque(maxlen=size)
        self.values: deque[torch.Tensor] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self.times)

    def append(self, t: float, v: torch.Tensor) -> None:
        """Record the real velocity ``v`` taken at time ``t``, dropping the oldest entry when full."""
        self.times.append(t)
        self.values.append(v)

    def extrapolate(self, t: float, order: int, drop_last: int = 0) -> torch.Tensor:
        """Order-``order`` estimate at ``t`` from the newest ``order + 1`` entries,
        ignoring the ``drop_last`` newest ones (to replay an earlier prediction).

        Returns ``newton_extrapolate`` of those entries at ``t``, of the entries' shape.

        Raises:
            ValueError: if fewer than ``order + 1`` entries remain, or their times repeat.
        """
        end = len(self.times) - drop_last
        start = end - order - 1
        if start < 0:
            raise ValueError(f"order-{order} extrapolation needs {order + 1} real evaluations, "
                             f"history has {end}")
        times = [self.times[i] for i in range(start, end)]
        values = [self.values[i] for i in range(start, end)]
        return newton_extrapolate(times, values, t)
