"""Fixed-grid ODE samplers for flow-matching models: one loop, small step rules.

Every sampler integrates dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data) on the
uniform grid t_k = k / T, k = 0..T, where for rectified flow x_t = (1 - t) * noise +
t * data and v = data - noise. ``velocity`` is any callable, called by keyword as
``velocity(x=x, t=t, **extras)`` with ``x`` of shape (batch, ...) and ``t`` of shape
(batch,); extras (class labels, guidance scale, ...) pass through untouched.
"""
from __future__ import annotations

from typing import Any

import torch

from .field import VelocityField, check_steps
from .result import SampleResult

__all__ = ["Sampler", "EulerSampler", "HeunSampler", "AdamsBashforthSampler"]


class Sampler:
    """The shared time loop. Subclasses only say how one step is taken.

    ``start`` builds the per-run state, ``step`` advances x_k to x_{k+1}, ``finish``
    returns sampler-specific info. State that must outlive a call (a bandit) lives on
    the sampler itself.
    """

    order: int = 1

    def __init__(self, steps: int):
        self.steps = check_steps(steps)

    def sample(self, velocity, x_init: torch.Tensor, *, trace: bool = False,
               check: bool = True, **extras: Any) -> SampleResult:
        """Integrate from x_init at t = 0 to t = 1.

        Args:
            velocity: callable ``velocity(x=x, t=t, **extras) -> v`` with v shaped like x.
            x_init: noise at t = 0, shape (batch, ...).
            trace: keep every state x_0..x_T in ``result.trace``.
            check: verify that every model output is finite (one device read at the end of the run;
                a non-finite output raises ValueError naming the first bad call and its time).
            **extras: passed to every ``velocity`` call.

        Returns:
            SampleResult with the final x at t = 1, the number of model calls and the
            skipped steps.
        """
        field = VelocityField(velocity, x_init, self.steps, extras, check=check)
        state = self.start(field)
        x = x_init
        states = [x] if trace else None
        with torch.no_grad():
            for k in range(self.steps):
                x = self.step(field, state, k, x)
                if states is not None:
                    states.append(x)
        reads = field.verify()  # before finish: a learning sampler must not learn from a failed run
        info = self.finish(field, state)
        info["host_reads"] = info.get("host_reads", 0) + reads
        return SampleResult(x=x, nfe=field.nfe, skipped=sorted(field.skipped), trace=states, info=info)

    def start(self, field: VelocityField) -> Any:
        return None

    def step(self, field: VelocityField, state: Any, k: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, field: VelocityField, state: Any) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps})"


class EulerSampler(Sampler):
    """Forward Euler, x_{k+1} = x_k + dt * v_k, one model call per step (T in all).

    ``velocity`` is the hook where skipping samplers plug in: they return an
    extrapolated or cached estimate instead of calling the model.
    """

    order = 1

    def step(self, field, state, k, x):
        return x + field.dt * self.velocity(field, state, k, x)

    def velocity(self, field: VelocityField, state: Any, k: int, x: torch.Tensor) -> torch.Tensor:
        return field.at(k, x)


class HeunSampler(Sampler):
    """Heun's method (explicit trapezoid), second order, two model calls per step (2T):

        d_k = v(x_k, t_k);  x~ = x_k + dt d_k;  x_{k+1} = x_k + dt/2 (d_k + v(x~, t_{k+1})).

    ``correct_last=False`` takes the last step with Euler (2T - 1 calls), as EDM does, so the
    model is never evaluated at t = 1: for rectified flow on data concentrated on a manifold
    the learned velocity there is E[data - noise | x_1 = data] = x_1, not the velocity along
    the path, and the corrector would import that jump.
    """

    order = 2

    def __init__(self, steps: int, correct_last: bool = True):
        super().__init__(steps)
        self.correct_last = correct_last

    def step(self, field, state, k, x):
        d = field.at(k, x)
        if k == self.steps - 1 and not self.correct_last:
            return x + field.dt * d
        d_next = field.at(k + 1, x + field.dt * d)
        return x + 0.5 * field.dt * (d + d_next)

    def __repr__(self) -> str:
        return f"HeunSampler(steps={self.steps}, correct_last={self.correct_last})"


# Adams-Bashforth coefficients on a uniform grid: x_{k+1} = x_k + dt * sum_j b_j v_{k-j}.
AB_COEFFICIENTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class AdamsBashforthSampler(Sampler):
    """Explicit Adams-Bashforth of order p (1..4), one model call per step (T in all).

    x_{k+1} = x_k + dt * sum_j b_j v_{k-j}. The first steps, which lack history, use the
    highest order available (Euler, then AB2, ...), which keeps global order p.
    """

    def __init__(self, steps: int, order: int = 2):
        super().__init__(steps)
        if order not in AB_COEFFICIENTS:
            raise ValueError(f"Adams-Bashforth order must be one of {sorted(AB_COEFFICIENTS)}, got {order}")
        self.order = order

    def start(self, field):
        return []  # past velocities, newest first

    def step(self, field, past, k, x):
        past.insert(0, field.at(k, x))
        del past[self.order:]
        coeffs = AB_COEFFICIENTS[len(past)]
        return x + field.dt * sum(b * v for b, v in zip(coeffs, past))

    def __repr__(self) -> str:
        return f"AdamsBashforthSampler(steps={self.steps}, order={self.order})"
