"""Time grids t_0 = 0 < t_1 < ... < t_T = 1 for the samplers (t = 0 noise, t = 1 data).

Every sampler takes either ``steps`` (the uniform grid) or ``times``, any of these grids or
your own: any strictly monotone grid inside [0, 1], so also t_0 > 0 (partial generation) or a
decreasing one (inversion, data towards noise; e.g. ``uniform(T).flip(0)``). Each function returns a float64 CPU tensor of shape (T + 1,).

    uniform(T):           t_k = k / T
    shifted(T, shift):    t_k = 1 - sigma(1 - k / T),  sigma(s) = shift s / (1 + (shift - 1) s)
    edm(T, ...):          t_k = 1 / (1 + sigma_k), sigma_k the EDM (Karras et al. 2022) levels

``shifted`` is the grid of Stable Diffusion 3 and Flux: they integrate the noise level sigma
from 1 (noise) to 0 (data) on sigma_k = sigma(1 - k / T); in our time t = 1 - sigma. A shift
above 1 spends more steps near the noise (shift = 3 for SD3 at 1024 px). ``edm`` maps EDM's
noise levels to rectified-flow time: x_t = (1 - t) noise + t data is data + sigma noise
rescaled by t, with sigma = (1 - t) / t, so t = 1 / (1 + sigma); its first point
(sigma = sigma_max) is moved to t = 0 and its last (sigma = 0) is t = 1.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

__all__ = ["uniform", "interval", "shifted", "edm", "check_times", "resolve_grid", "is_uniform"]

Grid = Union[torch.Tensor, Sequence[float]]


def _check_steps(steps) -> int:
    """Validate a number of steps T (an int >= 2) and return it (``fastflow.field.check_steps``).

    Raises:
        TypeError: for a ``steps`` that is not an int (a bool included).
        ValueError: for ``steps`` < 2.
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    return steps


def uniform(steps: int) -> torch.Tensor:
    """(T + 1,) float64: t_k = k / T, from t_0 = 0 (noise) to t_T = 1 (data).

    Raises:
        TypeError: for a ``steps`` that is not an int.
        ValueError: for ``steps`` < 2.
    """
    steps = _check_steps(steps)
    return torch.arange(steps + 1, dtype=torch.float64) / steps


def interval(steps: int, t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    """(T + 1,) float64: T equal steps from t0 to t1, either way: ``interval(T, 0.3)`` for a
    partial generation from t0 = 0.3, ``interval(T, 1.0, 0.0)`` for an inversion.

    Raises:
        TypeError: for a ``steps`` that is not an int.
        ValueError: for ``steps`` < 2, or ends that are not distinct numbers in [0, 1].
    """
    steps = _check_steps(steps)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in (t0, t1)) \
            or t0 == t1:
        raise ValueError(f"interval ends must be distinct numbers in [0, 1], got {t0!r} and {t1!r}")
    k = torch.arange(steps + 1, dtype=torch.float64) / steps
    return check_times(t0 + (t1 - t0) * k)


def shifted(steps: int, shift: float = 3.0) -> torch.Tensor:
    """(T + 1,) float64 SD3/Flux grid: t_k = 1 - shift s / (1 + (shift - 1) s), s = 1 - k / T.

    shift = 1 is the uniform grid; shift > 1 puts more steps near t = 0 (noise).

    Raises:
        ValueError: for shift <= 0 (or NaN), or ``steps`` < 2.
        TypeError: for a ``steps`` that is not an int.
    """
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    s = 1 - uniform(steps)
    t = 1 - shift * s / (1 + (shift - 1) * s)
    t[0], t[-1] = 0.0, 1.0  # exact ends despite rounding
    return t


def edm(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """(T + 1,) float64 EDM grid in rectified-flow time.

    sigma_i = (sigma_max^(1/rho) + i / (T - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i = 0..T-1 and sigma_T = 0; t_i = 1 / (1 + sigma_i), then t_0 is set to 0 (pure noise).

    Raises:
        ValueError: unless 0 < sigma_min < sigma_max and rho > 0; for ``steps`` < 2.
        TypeError: for a ``steps`` that is not an int.
    """
    steps = _check_steps(steps)
    if not 0 < sigma_min < sigma_max or not rho > 0:
        raise ValueError(f"need 0 < sigma_min < sigma_max and rho > 0, got {sigma_min}, {sigma_max}, {rho}")
    i = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    sigma = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([1 / (1 + sigma), torch.ones(1, dtype=torch.float64)])
    t[0] = 0.0
    return t


MIN_STEP = 1e-9  # the shortest step a grid may have, relative to its span


def check_times(times: Grid) -> torch.Tensor:
    """Validate a grid and return it as a float64 CPU tensor (T + 1,).

    A grid is any strictly monotone sequence inside [0, 1]: increasing from 0 to 1 (generation),
    increasing from t_0 > 0 (partial generation from a noised input, as in editing), or
    decreasing (inversion, from data towards noise). Points within 1e-12 of 0 or 1 are snapped
    to exactly 0 or 1.

    Raises:
        ValueError: one line saying what is wrong: not a sequence of numbers, not 1-D, fewer than
            3 points (2 steps), not finite, outside [0, 1], not strictly monotone (naming the
            first offending pair), or with a step shorter than 1e-9 of the grid's span.
    """
    try:
        t = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"times must be a 1-D sequence of numbers: {e}") from None
    if t.dim() != 1 or len(t) < 3:
        raise ValueError(f"times must be 1-D with at least 3 points (2 steps), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("times must be finite")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-12 or hi > 1 + 1e-12:
        raise ValueError(f"times must lie inside [0, 1] (t = 0 noise, t = 1 data), got {lo} .. {hi}")
    step = t[1:] - t[:-1]
    increasing = bool(step[0] > 0)
    bad = (step <= 0 if increasing else step >= 0).nonzero()
    if len(bad):
        k = int(bad[0])
        what = "repeats" if t[k + 1] == t[k] else ("decreases" if increasing else "increases")
        raise ValueError(f"times must be strictly {'increasing' if increasing else 'decreasing'}: it {what} "
                         f"at index {k + 1} ({float(t[k])} then {float(t[k + 1])})")
    span = abs(float(t[-1] - t[0]))
    shortest = float((t[1:] - t[:-1]).abs().min())
    if shortest < MIN_STEP * span:  # divided differences over such a step overflow: no velocity can be told apart
        k = int((t[1:] - t[:-1]).abs().argmin())
        raise ValueError(f"times has a step of {shortest:.3g} at index {k} ({float(t[k])} to {float(t[k + 1])}), "
                         f"shorter than {MIN_STEP:g} of its span: too short to integrate or extrapolate over")
    t = t.clone()
    t[t.abs() <= 1e-12] = 0.0
    t[(t - 1).abs() <= 1e-12] = 1.0
    return t


def resolve_grid(steps: Optional[int], times: Optional[Grid]) -> tuple[int, torch.Tensor]:
    """(T, times) from exactly one of ``steps`` (uniform grid from 0 to 1) and ``times`` (any
    strictly monotone grid inside [0, 1]); both if they agree.

    Raises:
        TypeError: if neither is given, or ``steps`` is not an int.
        ValueError: if they disagree, ``steps`` < 2, or ``times`` is invalid (``check_times``).
    """
    if times is None:
        if steps is None:
            raise TypeError("give steps (an int) or times (a grid from 0 to 1)")
        return _check_steps(steps), uniform(steps)
    t = check_times(times)
    if steps is not None and _check_steps(steps) != len(t) - 1:
        raise ValueError(f"steps={steps} but times has {len(t) - 1} steps")
    return len(t) - 1, t


def is_uniform(times: torch.Tensor, atol: float = 1e-12) -> bool:
    """Whether ``times`` (a (T + 1,) float64 tensor) is k / T up to ``atol``.

    Raises:
        ValueError: for fewer than 3 points (T < 2, from ``uniform``).
    """
    return bool(torch.allclose(times, uniform(len(times) - 1), rtol=0, atol=atol))
