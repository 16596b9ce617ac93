"""FlowTurbo (Zhao et al., NeurIPS 2024): Heun blocks, pseudo-corrector blocks and
velocity-refiner blocks on one uniform grid, written H_a P_b R_c.

Time convention: t = 0 noise, t = 1 data; N = a + b + c blocks on t_i = i / N (or on ``times``,
any grid of N steps from ``fastflow.grids``), block i of length dt = t_{i+1} - t_i.
Each block maps x_i to x_{i+1} and hands a velocity on to the next block.

* Heun (2 model calls): d_i = v(x_i, t_i); x~ = x_i + dt d_i; d_{i+1} = v(x~, t_{i+1});
  x_{i+1} = x_i + dt/2 (d_i + d_{i+1}); hands d_{i+1} on.
* Pseudo corrector (1 call): the same update with d_i the velocity handed over
  (computed at x~ of the previous block, not at x_i); second order, but needs a
  Heun block first.
* Refiner (0 model calls, 2 refiner calls). The refiner r(x, t, u) predicts the
  correction that turns a reference velocity u into the model's velocity at (x, t):
  v(x, t) ~ u + r(x, t, u). With u the velocity handed over:
  d_i = u + r(x_i, t_i, u); x~ = x_i + dt d_i; d_{i+1} = d_i + r(x~, t_{i+1}, d_i);
  x_{i+1} = x_i + dt/2 (d_i + d_{i+1}); hands d_i on. An exact refiner reproduces Heun.
  ``refiner_form="published"`` conditions the second call on u instead of d_i, as
  FlowTurbo's public code does, which counts the first correction twice.

``correct_last=False`` ends with an Euler step x_N = x_{N-1} + dt d_{N-1}: the last block
skips its corrector, so neither the model nor the refiner is evaluated at t = 1 (see
``HeunSampler``); that saves one model call (H or P last) or one refiner call (R last).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from . import checks
from .field import VelocityField
from .solvers import Sampler

__all__ = ["FlowTurboSampler", "REFINER_FORMS"]

REFINER_FORMS = ("consistent", "published")


def _count(name: str, value: int) -> int:
    return checks.int_in(name, value, 0)


class FlowTurboSampler(Sampler):
    """H_a P_b R_c: ``heun`` Heun blocks, then ``pseudo`` pseudo-corrector blocks, then
    ``refine`` refiner blocks. Makes 2a + b model calls and 2c refiner calls.

    Args:
        heun, pseudo, refine: block counts a, b, c (a + b + c >= 2 steps).
        correct_last: False to end with an Euler step (no evaluation at t = 1).
        times: optional grid of a + b + c steps (default: uniform).
        refiner: callable ``refiner(x=x, t=t, u=u, **extras) -> correction`` shaped like x;
            required when refine > 0. Extras are the ones given to ``sample``.
        refiner_form: "consistent" (default) or "published".

    Time convention: t = 0 noise, t = 1 data; block i goes from t_i to t_{i+1} (module docstring).

    ``SampleResult.info`` keys: ``refiner_calls`` (refiner evaluations in the run: 2c, or 2c - 1
    with ``correct_last=False`` and a refiner block last), ``config`` (the name ``"HaPbRc"``),
    ``host_reads`` (1 for the finiteness check of the model's outputs, 0 with ``check=False``;
    the refiner's outputs are not checked for finiteness, nor cast to the dtype of x).

    Raises:
        ValueError: for negative or non-int counts, fewer than 2 blocks, pseudo blocks without a
            Heun block, refiner blocks without a refiner or a block before them, an unknown
            ``refiner_form``, or a bad grid (``times`` invalid, or not of a + b + c steps).
    """

    def __init__(self, heun: int, pseudo: int = 0, refine: int = 0,
                 refiner: Optional[Callable[..., torch.Tensor]] = None, refiner_form: str = "consistent",
                 correct_last: bool = True, times=None):
        a, b, c = _count("heun", heun), _count("pseudo", pseudo), _count("refine", refine)
        if b > 0 and a == 0:
            raise ValueError("pseudo-corrector blocks need a Heun block first (heun >= 1) to hand them a velocity")
        if c > 0 and a + b == 0:
            raise ValueError("refiner blocks need a Heun or pseudo block first to hand them a velocity")
        if c > 0 and refiner is None:
            raise ValueError(f"refine={c} needs a refiner")
        if refiner_form not in REFINER_FORMS:
            raise ValueError(f"refiner_form must be one of {REFINER_FORMS}, got {refiner_form!r}")
        if a + b + c < 2:
            raise ValueError(f"FlowTurbo needs at least 2 blocks in all (heun + pseudo + refine), got "
                             f"H{a}P{b}R{c}")
        super().__init__(a + b + c, times=times)
        self.heun, self.pseudo, self.refine = a, b, c
        self.refiner = refiner
        self.refiner_form = refiner_form
        self.correct_last = correct_last
        self.order = 2

    @property
    def name(self) -> str:
        """The configuration as ``"HaPbRc"``, e.g. ``"H2P1R0"``."""
        return f"H{self.heun}P{self.pseudo}R{self.refine}"

    def expected_calls(self) -> int:
        """Model calls per run: 2a + b, one fewer when a Heun or pseudo block is last and
        ``correct_last=False`` (refiner calls not counted)."""
        euler_end = not self.correct_last and self.steps - 1 < self.heun + self.pseudo
        return 2 * self.heun + self.pseudo - (1 if euler_end else 0)

    def start(self, field):
        """The run state: the velocity handed to the next block, and the refiner calls made."""
        return {"handed": None, "refiner_calls": 0}

    def _refine(self, field: VelocityField, st: dict, x: torch.Tensor, t: float, u: torch.Tensor) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        r = self.refiner(x=x, t=tt, u=u, **field.extras)
        st["refiner_calls"] += 1
        if not isinstance(r, torch.Tensor) or r.shape != x.shape:
            got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise ValueError(f"refiner returned {got}, expected shape {tuple(x.shape)}")
        return r

    def step(self, field, st, k, x):
        """Block k from t_k to t_{k+1}: Heun for k < a, pseudo corrector for a <= k < a + b,
        refiner after (module docstring); an Euler step last with ``correct_last=False``.

        Raises:
            ValueError: for a refiner or model output that is not a tensor of the shape of x.
            Whatever the refiner raises, unchanged.
        """
        dt, t0, t1 = field.dt(k), field.t(k), field.t(k + 1)
        euler_end = k == self.steps - 1 and not self.correct_last
        if k < self.heun + self.pseudo:
            d0 = field.at(k, x) if k < self.heun else st["handed"]
            if euler_end:
                return x + dt * d0
            d1 = field.at(k + 1, x + dt * d0)
            st["handed"] = d1
        else:
            u = st["handed"]
            d0 = u + self._refine(field, st, x, t0, u)
            if euler_end:
                return x + dt * d0
            cond = d0 if self.refiner_form == "consistent" else u
            d1 = d0 + self._refine(field, st, x + dt * d0, t1, cond)
            st["handed"] = d0
        return x + 0.5 * dt * (d0 + d1)

    def finish(self, field, st) -> dict[str, Any]:
        """``{"refiner_calls": ..., "config": name}`` (``sample`` adds ``host_reads``)."""
        return {"refiner_calls": st["refiner_calls"], "config": self.name}

    def __repr__(self):
        return (f"FlowTurboSampler({self.name}, refiner_form='{self.refiner_form}', "
                f"correct_last={self.correct_last})")
