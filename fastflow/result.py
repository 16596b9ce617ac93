"""The object every sampler returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

__all__ = ["SampleResult"]


@dataclass
class SampleResult:
    """Outcome of one sampling run.

    Attributes:
        x: final state at t = 1 (data side), same shape as ``x_init``.
        nfe: number of calls of the velocity model actually made.
        skipped: sorted step indices k whose velocity was not evaluated but
            extrapolated or reused (Euler-type samplers only).
        trace: states x_0, ..., x_T if the run was asked to record them.
        info: sampler-specific extras (bandit decisions, refiner calls, ...); every sampler reports
            ``host_reads``, the device-to-host reads its own bookkeeping made during the run.
            Each sampler class lists its keys in its docstring.

    Time convention: t = 0 is noise (``x_init``), t = 1 is data (``x``).

    Raises:
        Nothing of its own (a plain dataclass; nothing is validated).
    """

    x: torch.Tensor
    nfe: int
    skipped: list[int] = field(default_factory=list)
    trace: Optional[list[torch.Tensor]] = None
    info: dict[str, Any] = field(default_factory=dict)
