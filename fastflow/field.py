"""A user's velocity callable, wrapped for one sampling run on a time grid."""
from __future__ import annotations

import weakref
from typing import Any, Callable, Union

import torch

from .grids import _check_steps as check_steps
from .grids import check_times, is_uniform, uniform

__all__ = ["VelocityField", "OutputGuard", "check_steps"]

Velocity = Callable[..., torch.Tensor]


class OutputGuard:
    """Refuses a model output that shares memory with an earlier output still in use.

    A model that writes every result into one buffer (as CUDA graphs do) overwrites, inside its
    own call, the velocities a sampler keeps (for extrapolation, a corrector, a multistep rule):
    every skip would look free and the result would be wrong with no sign of it. By the time the
    second output arrives the first is already overwritten, so a copy cannot repair it; the guard
    raises instead. Looking costs no device work (storage addresses only).

    Raises:
        ValueError: from ``own``, for an output in the memory of a live earlier output.
    """

    def __init__(self, who: str = "the sampler"):
        self.who = who
        self._alive: list = []  # (weak reference, storage address) of this run's outputs

    def own(self, v: torch.Tensor) -> torch.Tensor:
        """``v``, after checking that its storage is not that of a live earlier output.

        Raises:
            ValueError: for an output in the memory of a live earlier output.
        """
        self._alive = [(r, p) for r, p in self._alive if r() is not None]
        ptr = v.untyped_storage().data_ptr()
        if any(p == ptr for _, p in self._alive):
            raise ValueError(f"the model returned its output in the memory of an earlier output that {self.who} "
                             f"still uses (a reused output buffer, as with CUDA graphs), which overwrote it; "
                             f"return a copy: e.g. lambda **kw: model(**kw).clone()")
        self._alive.append((weakref.ref(v), ptr))
        return v


class VelocityField:
    """Calls ``velocity(x=x, t=t, **extras)`` on the grid t_0 = 0 < ... < t_T = 1, and counts the calls.

    ``times`` is the grid (a (T + 1,) tensor, see ``fastflow.grids``) or an int T for the uniform
    grid t_k = k / T; step k goes from t_k to t_{k+1}, of length ``dt(k)``.

    Time convention: t = 0 is noise, t = 1 is data; ``t`` is handed to the model as a
    tensor of shape (batch,) with the dtype and device of ``x``.

    Every call is checked: the output must have the shape of ``x`` (a host-side check, no sync)
    and be finite. With ``guard`` (samplers that keep earlier outputs), an output in the memory of
    an earlier output still held (a model reusing one output buffer) is refused (``OutputGuard``). An output of another dtype is cast to the dtype of ``x``, so the state keeps the
    dtype of ``x_init`` (which must be floating point) whatever the model computes in. Finiteness is recorded as an on-device flag per call and read once, by
    ``verify()`` at the end of the run, so the sampling loop never waits on the device for it;
    ``check=False`` skips it.

    Args:
        velocity: the model, called as ``velocity(x=x, t=t, **extras)``.
        x_init: the state at t = 0, a floating-point tensor of shape (batch, ...), batch >= 1.
        times: an int T (uniform grid) or a strictly monotone (T + 1,) grid inside [0, 1].
        extras: keyword arguments passed to every call.
        check: record the finiteness of every output for ``verify()``.
        guard: refuse outputs in the memory of live earlier ones (``OutputGuard``).

    Raises:
        TypeError: for a ``velocity`` that is not callable (or a bool ``times``).
        ValueError: for an ``x_init`` that is not a floating-point tensor of shape (batch, ...)
            holding at least one sample, or a bad grid (T < 2, or ``check_times``'s errors).
    """

    def __init__(self, velocity: Velocity, x_init: torch.Tensor, times: Union[int, torch.Tensor],
                 extras: dict[str, Any], check: bool = True, guard: bool = False):
        if not callable(velocity):
            raise TypeError(f"velocity must be callable, got {type(velocity).__name__}")
        if not isinstance(x_init, torch.Tensor) or x_init.dim() < 1:
            raise ValueError("x_init must be a tensor of shape (batch, ...)")
        if not x_init.is_floating_point():
            raise ValueError(f"x_init must be a floating-point tensor (noise), got {x_init.dtype}")
        if x_init.dim() == 0 or x_init.shape[0] == 0 or x_init.numel() == 0:
            raise ValueError(f"x_init must hold at least one sample, got shape {tuple(x_init.shape)}")
        self.velocity = velocity
        self.extras = extras
        grid = uniform(times) if isinstance(times, int) else check_times(times)
        self.grid = grid.tolist()                      # python floats: no device traffic per step
        self.steps = len(self.grid) - 1
        self.steps_dt = ([1.0 / self.steps] * self.steps if is_uniform(grid)  # exactly 1 / T when uniform
                         else [b - a for a, b in zip(self.grid, self.grid[1:])])
        self.shape, self.dtype = x_init.shape, x_init.dtype
        self.check = check
        self.nfe = 0
        self.skipped: list[int] = []
        self._finite: list[torch.Tensor] = []   # one 0-d bool per call, read by verify()
        self._finite_raw: list[torch.Tensor] = []  # the same before the cast to x's dtype
        self._times: list[float] = []
        self.guard = OutputGuard() if guard else None  # refuses outputs that reuse a kept output's memory

    def t(self, k: int) -> float:
        """Time t_k of grid point k."""
        return self.grid[k]

    def dt(self, k: int) -> float:
        """Length t_{k+1} - t_k of step k."""
        return self.steps_dt[k]

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Evaluate the model at state x (batch, ...) and scalar time t; returns (batch, ...).

        ``t`` is broadcast to a (batch,) tensor of x's dtype and device; the output is cast to
        x's dtype and counted in ``nfe``.

        Raises:
            ValueError: for an output that is not a tensor of the shape of x (naming the call
                and its time).
            Whatever the model raises, unchanged.
        """
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        v = self.velocity(x=x, t=tt, **self.extras)
        self.nfe += 1
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"velocity returned {got}, expected a tensor of shape {tuple(x.shape)} "
                             f"(call {self.nfe}, t={t:.4f})")
        raw = None
        if v.dtype != x.dtype:  # the state keeps x_init's dtype: a model in bf16 or fp64 is cast back
            if self.check:  # finite before the cast: a later non-finite flag means the cast overflowed
                raw = torch.isfinite(v).all()
            v = v.to(x.dtype)
        if self.guard is not None:
            self.guard.own(v)
        if self.check:
            self._finite.append(torch.isfinite(v).all())
            self._finite_raw.append(self._finite[-1] if raw is None else raw)
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
        flags, raw = torch.stack([torch.stack(self._finite), torch.stack(self._finite_raw)]).tolist()
        if not all(flags):
            first = flags.index(False)
            where = f"call {first + 1}, t={self._times[first]:.4f}"
            if raw[first]:
                raise ValueError(f"velocity values overflow the dtype of x ({self.dtype}, largest "
                                 f"{torch.finfo(self.dtype).max:.6g}) when cast to it ({where}); sample in a wider dtype")
            raise ValueError(f"velocity returned non-finite values ({where})")
        return 1

    def at(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the model at grid point k: ``self(x, t_k)``.

        Raises:
            ValueError: as ``__call__``, for an output of the wrong shape.
        """
        return self(x, self.t(k))

    def mark_skipped(self, k: int) -> None:
        """Record that step k used no model call."""
        self.skipped.append(k)
