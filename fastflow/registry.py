"""Every sampler by name, for command lines and configs: ``make_sampler("heun", steps=25)``.

Each entry builds a sampler from keyword settings; all but FlowTurbo (whose blocks set its steps)
take ``steps`` or ``times``. ``"static"`` is FastFlow's fixed every-other-step schedule
(``fastflow.caching.static_skip_schedule``) played by ``ExtrapolatedEulerSampler``.
"""
from __future__ import annotations

from typing import Callable

from .choice import BudgetSampler
from .caching import TaylorSeerSampler, TeaCacheSampler, static_skip_schedule
from .fastflow import ExtrapolatedEulerSampler, FastFlowSampler
from .flowturbo import FlowTurboSampler
from .grids import resolve_grid
from .solvers import AdamsBashforthSampler, EulerSampler, HeunSampler, Sampler
from .unipc import UniPCSampler

__all__ = ["SAMPLERS", "make_sampler", "static_sampler"]


def static_sampler(steps=None, order: int = 1, *, times=None, base: str = "euler") -> ExtrapolatedEulerSampler:
    """Extrapolate every other step (S = {p + 1, p + 3, ...} below T - 1), with no calibration.

    Raises:
        ValueError, TypeError: as ``ExtrapolatedEulerSampler`` for a bad grid or order.
    """
    T, grid = resolve_grid(steps, times)
    return ExtrapolatedEulerSampler(grid, static_skip_schedule(T, order), order, base=base)


SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "euler": EulerSampler,
    "heun": HeunSampler,
    "ab2": AdamsBashforthSampler,  # order 2 by default; order=1..4 given
    "fastflow": FastFlowSampler,
    "teacache": TeaCacheSampler,
    "taylorseer": TaylorSeerSampler,
    "static": static_sampler,
    "flowturbo": FlowTurboSampler,
    "unipc": UniPCSampler,  # order 2 with the corrector by default
    "best": BudgetSampler,  # the best candidate at calls=K, chosen by replay (fastflow.choice)
}


def make_sampler(name: str, **settings) -> Sampler:
    """The sampler registered as ``name``, built from ``settings``.

    Raises:
        ValueError: for an unknown name (listing the known ones), or what the sampler refuses.
        TypeError: for a setting the sampler does not take.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}, choose from {list(SAMPLERS)}")
    return SAMPLERS[name](**settings)
