"""A user's velocity callable, wrapped for one sampling run on a uniform grid."""
from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["VelocityField", "check_steps"]

Velocity = Callable[..., torch.Tensor]


def check_steps(steps: int) -> int:
    """Validate a number of grid steps T (an int >= 2) and return it."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    return steps


class VelocityField:
    """Calls ``velocity(x=x, t=t, **extras)`` on the grid t_k = k / T, and counts the calls.

    Time convention: t = 0 is noise, t = 1 is data; ``t`` is handed to the model as a
    tensor of shape (batch,) with the dtype and device of ``x``.

    Every call is checked: the output must have the shape of ``x`` (a host-side check, no sync)
    and be finite. Finiteness is recorded as an on-device flag per call and read once, by
    ``verify()`` at the end of the run, so the sampling loop never waits on the device for it;
    ``check=False`` skips it.
    """

    def __init__(self, velocity: Velocity, x_init: torch.Tensor, steps: int,
                 extras: dict[str, Any], check: bool = True):
        if not callable(velocity):
            raise TypeError(f"velocity must be callable, got {type(velocity).__name__}")
        if not isinstance(x_init, torch.Tensor) or x_init.dim() < 1:
            raise ValueError("x_init must be a tensor of shape (batch, ...)")
        self.velocity = velocity
        self.extras = extras
        self.steps = check_steps(steps)
        self.dt = 1.0 / steps
        self.shape = x_init.shape
        self.check = check
        self.nfe = 0
        self.skipped: list[int] = []
        self._finite: list[torch.Tensor] = []   # one 0-d bool per call, read by verify()
        self._times: list[float] = []

    def t(self, k: int) -> float:
        """Time of grid point k."""
        return k / self.steps

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Evaluate the model at state x (batch, ...) and scalar time t; returns (batch, ...)."""
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        v = self.velocity(x=x, t=tt, **self.extras)
        self.nfe += 1
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"velocity returned {got}, expected a tensor of shape {tuple(x.shape)} "
                             f"(call {self.nfe}, t={t:.4f})")
        if self.check:
            self._finite.append(torch.isfinite(v).all())
            self._times.append(t)
        return v

    def verify(self) -> int:
        """Read the finiteness flags of every call at once (one device-to-host read); returns the
        number of reads made (0 or 1).

        Raises:
            ValueError: naming the first call (and its time) whose output was not finite.
        """
        if not self._finite:
            return 0
        flags = torch.stack(self._finite).tolist()
        if not all(flags):
            first = flags.index(False)
            raise ValueError(f"velocity returned non-finite values (call {first + 1}, t={self._times[first]:.4f})")
        return 1

    def at(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the model at grid point k."""
        return self(x, self.t(k))

    def mark_skipped(self, k: int) -> None:
        """Record that step k used no model call."""
        self.skipped.append(k)
