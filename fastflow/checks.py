"""Argument checks shared by the whole library: each returns the value it accepts and raises a
one-line ValueError naming the argument otherwise. A bool is never accepted as an int."""
from __future__ import annotations

import math
from typing import Optional

__all__ = ["is_int", "int_in", "order", "finite", "MAX_STEPS"]

# the largest step count anything accepts: a schedule or state of a larger grid is a crafted file
MAX_STEPS = 100_000


def is_int(value) -> bool:
    """Whether ``value`` is an int and not a bool.

    Raises:
        Nothing.
    """
    return isinstance(value, int) and not isinstance(value, bool)


def int_in(name: str, value, lo: int, hi: Optional[int] = None) -> int:
    """``value`` if it is an int in [lo, hi] (hi None: no upper bound).

    Raises:
        ValueError: naming ``name`` and the range otherwise.
    """
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        what = f"an int in [{lo}, {hi}]" if hi is not None else ("a non-negative int" if lo == 0 else f"an int >= {lo}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def order(value) -> int:
    """An extrapolation order p: an int in [1, 16] (a higher order only amplifies noise).

    Raises:
        ValueError: for a bool, a non-int, or an int outside [1, 16].
    """
    if not is_int(value) or not 1 <= value <= 16:
        raise ValueError(f"extrapolation order must be an int in [1, 16], got {value!r}")
    return value


def finite(name: str, value, lo: Optional[float] = None, what: Optional[str] = None) -> float:
    """``value`` as a float if it is a finite real number >= ``lo`` (when given).

    Raises:
        ValueError: naming ``name`` otherwise (``what`` replaces the default description).
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        ok = ok and math.isfinite(value) and (lo is None or value >= lo)
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        what = what or ("a finite number" + ("" if lo is None else f" >= {lo:g}"))
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)
