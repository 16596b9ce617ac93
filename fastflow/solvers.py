"""Fixed-grid ODE samplers for flow-matching models: one loop, small step rules.

Every sampler integrates dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data) on a grid
0 = t_0 < t_1 < ... < t_T = 1: the uniform t_k = k / T for ``steps=T``, or any grid passed as
``times`` (``fastflow.grids``: uniform, SD3/Flux-shifted, EDM), where for rectified flow x_t = (1 - t) * noise +
t * data and v = data - noise. ``velocity`` is any callable, called by keyword as
``velocity(x=x, t=t, **extras)`` with ``x`` of shape (batch, ...) and ``t`` of shape
(batch,); extras (class labels, guidance scale, ...) pass through untouched.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch

from . import checks
from .errors import lagrange_weights
from .field import VelocityField
from .grids import Grid, is_uniform, resolve_grid
from .result import SampleResult

__all__ = ["Sampler", "EulerSampler", "HeunSampler", "AdamsBashforthSampler"]


class Sampler:
    """The shared time loop. Subclasses only say how one step is taken.

    ``start`` builds the per-run state, ``step`` advances x_k to x_{k+1}, ``finish``
    returns sampler-specific info. State that must outlive a call (a bandit) lives on
    the sampler itself.

    Time convention: t = 0 is noise, t = 1 is data; the grid is t_k = k / T (``steps=T``) or
    any strictly monotone ``times`` inside [0, 1] (from t_0 > 0 for partial generation, or
    decreasing for inversion), and step k goes from t_k to t_{k+1}, of signed length dt_k.

    Args:
        steps: T, the number of steps of the uniform grid; or an increasing (T + 1,) grid.
        times: a strictly monotone (T + 1,) grid inside [0, 1] (``fastflow.grids``), instead of ``steps``.

    ``SampleResult.info`` keys: ``host_reads`` (device-to-host reads made by the sampler's own
    bookkeeping in the run: 1 for the finiteness check, 0 with ``check=False``), added by
    ``sample`` for every sampler; subclasses add their own keys (see their docstrings).

    ``keeps_outputs``: whether the step rule holds model outputs across calls (a corrector, a
    multistep rule, extrapolation). Such a sampler refuses a model that returns each output in
    the memory of an earlier one (a reused buffer, as with CUDA graphs), which would overwrite what
    it holds (``fastflow.field.OutputGuard``); Euler holds nothing and accepts it.

    Raises:
        TypeError: for a grid given both as ``steps`` and as ``times``, neither of them, or a
            ``steps`` that is not an int.
        ValueError: for ``steps`` < 2, or a bad ``times`` (``fastflow.grids.check_times``), or
            ``steps`` and ``times`` that disagree.
    """

    order: int = 1
    keeps_outputs: bool = True

    def __init__(self, steps: Optional[Union[int, Grid]] = None, *, times: Optional[Grid] = None):
        """``steps``: T for the uniform grid; or give ``times``, an increasing (T + 1,) grid from
        0 to 1 (``steps`` may also be such a grid).

        Raises:
            TypeError: for a grid given twice (as ``steps`` and as ``times``), neither ``steps``
                nor ``times``, or a ``steps`` that is not an int.
            ValueError: for a bad grid (``steps`` < 2, a bad ``times``, or both given and
                disagreeing).
        """
        if isinstance(steps, (torch.Tensor, list, tuple)):  # a grid passed as steps
            if times is not None:
                raise TypeError("give the grid once: as steps or as times")
            steps, times = None, steps
        self.steps, self.times = resolve_grid(steps, times)   # int T, (T + 1,) float64
        self.uniform = is_uniform(self.times)

    def sample(self, velocity, x_init: torch.Tensor, *, trace: bool = False,
               check: bool = True, model_kwargs: Optional[dict] = None, **extras: Any) -> SampleResult:
        """Integrate from x_init at t = 0 to t = 1.

        Args:
            velocity: callable ``velocity(x=x, t=t, **extras) -> v`` with v shaped like x.
            x_init: noise at t = 0, shape (batch, ...), floating point.
            trace: keep every state x_0..x_T in ``result.trace``.
            check: verify that every model output is finite (one device read at the end of the run;
                a non-finite output raises ValueError naming the first bad call and its time).
            model_kwargs: extras as a dict, merged with ``**extras``; the way to pass the model an
                argument named ``trace``, ``check`` or ``model_kwargs`` (names ``sample`` keeps).
            **extras: passed to every ``velocity`` call.

        Returns:
            SampleResult with the final x at t = 1, the number of model calls, the skipped steps,
            the trace if asked, and ``info`` (each sampler's keys are in its class docstring;
            every sampler has ``host_reads``).

        Raises:
            ValueError: for a non-bool ``trace`` or ``check`` (a model argument of that name
                belongs in ``model_kwargs``), a key given both ways, an ``x_init`` that is not a
                floating-point tensor of shape (batch, ...) with at least one sample, a velocity
                output that is not a tensor of the shape of x, or a non-finite velocity (with
                ``check``, after the loop); and a subclass's own run-time errors (see its
                docstring).
            TypeError: for a ``velocity`` that is not callable.
            NotImplementedError: on the base class, which has no step rule.
            Whatever ``velocity`` itself raises, unchanged.
        """
        for name, value in (("trace", trace), ("check", check)):
            if not isinstance(value, bool):
                raise ValueError(f"sample()'s '{name}' must be True or False, got {type(value).__name__}; to pass "
                                 f"the model an argument named '{name}', use model_kwargs={{'{name}': ...}}")
        if model_kwargs:
            both = set(model_kwargs) & set(extras)
            if both:
                raise ValueError(f"{sorted(both)} given both in model_kwargs and as keywords")
            extras = {**extras, **model_kwargs}
        field = VelocityField(velocity, x_init, self.steps if self.uniform else self.times, extras, check=check,
                              guard=self.keeps_outputs)
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

    def expected_calls(self) -> Optional[int]:
        """Model calls per run (``nfe``): T here, one per step; None where it depends on the data."""
        return self.steps

    def start(self, field: VelocityField) -> Any:
        """Build the per-run state from the run's ``field`` (called once, before step 0).
        The base class needs none and returns None."""
        return None

    def step(self, field: VelocityField, state: Any, k: int, x: torch.Tensor) -> torch.Tensor:
        """Advance the state x_k at t_k to x_{k+1} at t_{k+1} (shapes (batch, ...)), calling the
        model through ``field``. Each subclass gives its rule.

        Raises:
            NotImplementedError: always, on the base class.
        """
        raise NotImplementedError

    def finish(self, field: VelocityField, state: Any) -> dict:
        """The sampler's entries of ``SampleResult.info`` for the run that just ended (the base
        class has none; ``sample`` adds ``host_reads`` to whatever this returns)."""
        return {}

    def grid_repr(self) -> str:
        """'steps=T' for the uniform grid, else a short view of ``times``."""
        if self.uniform:
            return f"steps={self.steps}"
        t = self.times.tolist()
        return f"times=[{t[0]:.4g}, {t[1]:.4g}, ..., {t[-2]:.4g}, {t[-1]:.4g}] ({self.steps} steps)"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.grid_repr()})"


class EulerSampler(Sampler):
    """Forward Euler, x_{k+1} = x_k + dt * v_k, one model call per step (T in all).

    ``velocity`` is the hook where skipping samplers plug in: they return an
    extrapolated or cached estimate instead of calling the model.

    Time convention: t = 0 noise, t = 1 data; dt = t_{k+1} - t_k (1 / T on the uniform grid).

    Args:
        steps: T, or an increasing (T + 1,) grid; or give ``times`` (see ``Sampler``).

    ``SampleResult.info`` keys: ``host_reads`` (1 for the finiteness check, 0 with
    ``check=False``).

    Raises:
        TypeError: for a grid given twice or not at all, or a ``steps`` that is not an int (see ``Sampler``).
        ValueError: for a bad grid (see ``Sampler``).
    """

    order = 1
    keeps_outputs = False  # each velocity is used once, in its own step

    def step(self, field, state, k, x):
        """x_{k+1} = x_k + dt_k * v_k, with v_k from ``velocity`` (a model call here).

        Raises:
            ValueError: for a model output that is not a tensor of the shape of x (``VelocityField``).
        """
        return x + field.dt(k) * self.velocity(field, state, k, x)

    def velocity(self, field: VelocityField, state: Any, k: int, x: torch.Tensor) -> torch.Tensor:
        """The velocity used at step k: the model at (x_k, t_k), shape (batch, ...). Subclasses
        return an extrapolated or cached one instead on the steps they skip.

        Raises:
            ValueError: for a model output that is not a tensor of the shape of x (``VelocityField``).
        """
        return field.at(k, x)


class HeunSampler(Sampler):
    """Heun's method (explicit trapezoid), second order, two model calls per step (2T):

        d_k = v(x_k, t_k);  x~ = x_k + dt d_k;  x_{k+1} = x_k + dt/2 (d_k + v(x~, t_{k+1})).

    ``correct_last=False`` takes the last step with Euler (2T - 1 calls), as EDM does, so the
    model is never evaluated at t = 1: for rectified flow on data concentrated on a manifold
    the learned velocity there is E[data - noise | x_1 = data] = x_1, not the velocity along
    the path, and the corrector would import that jump.

    Args:
        steps: T, or an increasing (T + 1,) grid; or give ``times`` (see ``Sampler``).
        correct_last: False to take the last step with Euler (no model call at t = 1).

    ``SampleResult.info`` keys: ``host_reads`` (1 for the finiteness check, 0 with
    ``check=False``).

    Raises:
        TypeError: for a grid given twice or not at all, or a ``steps`` that is not an int (see ``Sampler``).
        ValueError: for a bad grid (see ``Sampler``).
    """

    order = 2

    def __init__(self, steps: Optional[int] = None, correct_last: bool = True, *, times: Optional[Grid] = None):
        super().__init__(steps, times=times)
        self.correct_last = correct_last

    def step(self, field, state, k, x):
        """One Heun step from t_k to t_{k+1} (an Euler step for the last one with
        ``correct_last=False``).

        Raises:
            ValueError: for a model output that is not a tensor of the shape of x (``VelocityField``).
        """
        d, dt = field.at(k, x), field.dt(k)
        if k == self.steps - 1 and not self.correct_last:
            return x + dt * d
        d_next = field.at(k + 1, x + dt * d)
        return x + 0.5 * dt * (d + d_next)

    def expected_calls(self) -> int:
        """Model calls per run: 2T, or 2T - 1 with ``correct_last=False``."""
        return 2 * self.steps - (0 if self.correct_last else 1)

    def __repr__(self) -> str:
        return f"HeunSampler({self.grid_repr()}, correct_last={self.correct_last})"


# Explicit Runge-Kutta tableaus (c, A, b) of orders 3 (Kutta) and 4 (classic), for AB3/AB4 start-up.
RK_TABLEAUS = {
    3: ((0.0, 0.5, 1.0), ((), (0.5,), (-1.0, 2.0)), (1 / 6, 2 / 3, 1 / 6)),
    4: ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def runge_kutta_step(field: VelocityField, k: int, x: torch.Tensor, v0: torch.Tensor, order: int) -> torch.Tensor:
    """One explicit RK step of ``order`` (3 or 4) from t_k to t_{k+1}; v0 = v(x, t_k) is its first stage.
    Makes order - 1 further model calls, at t_k + c_i dt_k.

    With the tableau (c, A, b) of ``RK_TABLEAUS``: x_i = x + dt_k sum_j a_ij s_j,
    s_i = v(x_i, t_k + c_i dt_k), and x_{k+1} = x + dt_k sum_i b_i s_i; x and v0 of shape (batch, ...).

    Raises:
        KeyError: for an ``order`` other than 3 or 4.
        ValueError: from ``field`` for a velocity of the wrong shape.
    """
    c, a, b = RK_TABLEAUS[order]
    t, dt = field.t(k), field.dt(k)
    stages = [v0]
    for i in range(1, order):
        xi = x + dt * sum(aij * s for aij, s in zip(a[i], stages) if aij != 0.0)
        stages.append(field(xi, t + c[i] * dt))
    return x + dt * sum(bi * s for bi, s in zip(b, stages))


# Adams-Bashforth coefficients on a uniform grid: x_{k+1} = x_k + dt * sum_j b_j v_{k-j}.
AB_COEFFICIENTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def ab_coefficients(nodes: Sequence[float], t0: float, t1: float) -> list[float]:
    """Variable-step Adams-Bashforth weights: b_j = (1 / h) int_{t0}^{t1} L_j(s) ds, h = t1 - t0.

    L_j is the Lagrange basis polynomial of ``nodes`` (past times, newest first, t0 among them),
    so x_{k+1} = x_k + h sum_j b_j v(nodes_j) integrates the interpolant of the past velocities
    exactly. Two-point Gauss-Legendre quadrature is exact for the degree <= 3 of orders 1..4.
    On a uniform grid these are the classical coefficients (``AB_COEFFICIENTS``).

    Returns:
        One weight per node, in the order of ``nodes``, as Python floats.

    Raises:
        Nothing of its own (repeated nodes give non-finite weights, not an error).
    """
    g = 3 ** -0.5
    quad = torch.tensor([0.5 * (t0 + t1) - 0.5 * (t1 - t0) * g, 0.5 * (t0 + t1) + 0.5 * (t1 - t0) * g],
                        dtype=torch.float64)
    n = torch.tensor([list(nodes)] * 2, dtype=torch.float64)
    return (0.5 * lagrange_weights(n, quad).sum(dim=0)).tolist()


class AdamsBashforthSampler(Sampler):
    """Explicit Adams-Bashforth of order p (1..4), one model call per step once started.

    x_{k+1} = x_k + dt_k * sum_j b_j v_{k-j}, with the classical b on a uniform grid and the
    variable-step weights of ``ab_coefficients`` (from the actual times) on any other.

    **Start-up.** The first p - 1 steps lack history. AB1 and AB2 start with Euler (a local error
    O(dt^2) in one step keeps AB2 second order). AB3 and AB4 take their first p - 1 steps with a
    Runge-Kutta method of order p (Kutta's RK3, classic RK4), whose first stage is the velocity
    AB needs anyway; a start with a lower-order step would cap the global order at 2. Calls per
    run: T for p <= 2; T + (p - 1)^2 for p = 3, 4 (T + 4 and T + 9), counted in ``nfe``.

    Time convention: t = 0 noise, t = 1 data; dt_k = t_{k+1} - t_k.

    Args:
        steps: T, or an increasing (T + 1,) grid; or give ``times`` (see ``Sampler``).
        order: p, 1..4.

    ``SampleResult.info`` keys: ``host_reads`` (1 for the finiteness check, 0 with
    ``check=False``).

    Raises:
        TypeError: for a grid given twice or not at all, or a ``steps`` that is not an int (see ``Sampler``).
        ValueError: for a bad grid (see ``Sampler``).
        ValueError: for an ``order`` outside 1..4.
    """

    def __init__(self, steps: Optional[int] = None, order: int = 2, *, times: Optional[Grid] = None):
        super().__init__(steps, times=times)
        if not checks.is_int(order) or order not in AB_COEFFICIENTS:
            raise ValueError(f"Adams-Bashforth order must be one of {sorted(AB_COEFFICIENTS)}, got {order}")
        self.order = order
        t = self.times.tolist()
        self.coefficients = [AB_COEFFICIENTS[min(k + 1, order)] if self.uniform else
                             tuple(ab_coefficients([t[k - j] for j in range(min(k + 1, order))], t[k], t[k + 1]))
                             for k in range(self.steps)]

    def expected_calls(self) -> int:
        """Model calls per run: T, plus (p - 1)^2 for the Runge-Kutta start of p = 3, 4."""
        startup = min(self.order - 1, self.steps) if self.order >= 3 else 0
        return self.steps + startup * (self.order - 1)

    def start(self, field):
        """The run state: the past velocities, newest first (empty at the start)."""
        return []  # past velocities, newest first

    def step(self, field, past, k, x):
        """One AB step x_{k+1} = x_k + dt_k sum_j b_j v_{k-j} (for p = 3, 4 the first p - 1
        steps are Runge-Kutta steps of order p).

        Raises:
            ValueError: for a model output that is not a tensor of the shape of x (``VelocityField``).
        """
        past.insert(0, field.at(k, x))
        del past[self.order:]
        if self.order >= 3 and k < self.order - 1:
            return runge_kutta_step(field, k, x, past[0], self.order)
        return x + field.dt(k) * sum(b * v for b, v in zip(self.coefficients[k], past))

    def __repr__(self) -> str:
        return f"AdamsBashforthSampler({self.grid_repr()}, order={self.order})"
