"""Two caching baselines from the diffusion-acceleration literature, as Euler skip rules.

Both plug into ``EulerSampler.velocity`` like FastFlow does, so they share its loop,
its NFE accounting, its grids and its time convention (t = 0 noise, t = 1 data).

* TeaCache-style (Liu et al., 2024): reuse the last computed velocity while the
  accumulated relative L1 change of the model input since that computation,
  sum_j ||x_j - x_{j-1}||_1 / ||x_{j-1}||_1, stays under a threshold. The first and the
  last step are always computed. (TeaCache proper measures the change of the
  timestep-modulated input of the first block and rescales it with a fitted polynomial;
  this rule uses the raw input, which keeps it model-agnostic.)
* TaylorSeer-style (Liu et al., 2025): compute the model every ``interval`` steps and
  forecast the velocity in between with an order-2 Taylor/finite-difference expansion
  through the last three computed velocities (lower orders while fewer exist).
"""
from __future__ import annotations

from typing import Optional

from . import checks
from .extrapolate import History, check_order
from .solvers import EulerSampler

__all__ = ["TeaCacheSampler", "TaylorSeerSampler", "static_skip_schedule"]


class TeaCacheSampler(EulerSampler):
    """Euler that reuses the cached velocity while the input has changed little.

    Time convention: t = 0 noise, t = 1 data. Before step k > 0 the rule adds
    delta_k = mean|x_k - x_{k-1}| / mean|x_{k-1}| to an accumulator; step k reuses the cached
    velocity while the accumulator is below ``threshold`` (never at step 0 or T - 1), and a
    computed step stores its velocity and resets the accumulator to 0.

    Args:
        steps: T, or an increasing (T + 1,) grid; or give ``times`` (see ``Sampler``).
        threshold: bound on the accumulated relative L1 change of x; 0 computes every step.

    ``SampleResult.info`` keys: ``host_reads`` (the rule's one read per step after the first,
    T - 1 in all, plus 1 for the finiteness check).

    Raises:
        TypeError: for a grid given twice or not at all, or a ``steps`` that is not an int (see ``Sampler``).
        ValueError: for a bad grid (see ``Sampler``).
        ValueError: for a threshold < 0 (or NaN).
    """

    keeps_outputs = True  # the cached velocity

    def __init__(self, steps: Optional[int] = None, threshold: float = 0.1, *, times=None):
        super().__init__(steps, times=times)
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = threshold

    def expected_calls(self) -> None:
        """None: how many steps reuse the cache depends on the data."""
        return None

    def start(self, field):
        """The run state: the cached velocity, the previous x, the accumulator, the reads made."""
        return {"cached": None, "prev_x": None, "acc": 0.0, "reads": 0}

    def velocity(self, field, st, k, x):
        """The cached velocity while the accumulated change is below the threshold, else the
        model at (x_k, t_k) (one host read per step k > 0 for the accumulator).

        Raises:
            ValueError: for a model output that is not a tensor of the shape of x (``VelocityField``).
        """
        if st["prev_x"] is not None:
            prev = st["prev_x"]
            # the decision needs the number on the host: one device read per step (counted)
            st["acc"] += ((x - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12)).item()
            st["reads"] += 1
        st["prev_x"] = x
        if st["cached"] is not None and k < field.steps - 1 and st["acc"] < self.threshold:
            field.mark_skipped(k)
            return st["cached"]
        st["cached"], st["acc"] = field.at(k, x), 0.0
        return st["cached"]

    def finish(self, field, st):
        """``{"host_reads": reads}``: the rule's reads (``sample`` adds the check's)."""
        return {"host_reads": st["reads"]}

    def __repr__(self):
        return f"TeaCacheSampler({self.grid_repr()}, threshold={self.threshold})"


class TaylorSeerSampler(EulerSampler):
    """Euler that calls the model at steps k = 0..order and every ``interval``-th step,
    and forecasts v elsewhere by Newton extrapolation through the last order + 1 calls.

    The model is called exactly at {k : k <= order or k % interval == 0}; elsewhere v_k is the
    order-p Newton polynomial (``fastflow.extrapolate``) through the last p + 1 calls, evaluated at
    t_k (time convention: t = 0 noise, t = 1 data).

    Args:
        steps: T, or an increasing (T + 1,) grid; or give ``times`` (see ``Sampler``).
        interval: call the model every ``interval``-th step, an int >= 1.
        order: extrapolation order p, an int >= 1.

    ``SampleResult.info`` keys: ``host_reads`` (1 for the finiteness check, 0 with
    ``check=False``).

    Raises:
        TypeError: for a grid given twice or not at all, or a ``steps`` that is not an int (see ``Sampler``).
        ValueError: for a bad grid (see ``Sampler``).
        ValueError: for an ``interval`` or ``order`` that is not an int >= 1.
    """

    keeps_outputs = True  # the history it extrapolates from

    def __init__(self, steps: Optional[int] = None, interval: int = 3, order: int = 2, *, times=None):
        super().__init__(steps, times=times)
        self.interval = checks.int_in("interval", interval, 1)
        self.order = check_order(order)

    def start(self, field):
        """The run state: a ``History`` of the last order + 1 model calls."""
        return History(self.order + 1)

    def velocity(self, field, history, k, x):
        """The model at (x_k, t_k) on the call steps, else the extrapolation at t_k.

        Raises:
            ValueError: for a model output that is not a tensor of the shape of x (``VelocityField``).
        """
        if k <= self.order or k % self.interval == 0:
            v = field.at(k, x)
            history.append(field.t(k), v)
            return v
        field.mark_skipped(k)
        return history.extrapolate(field.t(k), min(self.order, len(history) - 1))

    def expected_calls(self) -> int:
        """Model calls per run: steps 0..p and every ``interval``-th step."""
        return sum(1 for k in range(self.steps) if k <= self.order or k % self.interval == 0)

    def __repr__(self):
        return f"TaylorSeerSampler({self.grid_repr()}, interval={self.interval}, order={self.order})"


def static_skip_schedule(steps: int, order: int = 1) -> list[int]:
    """Extrapolate every other step: S = {order + 1, order + 3, ...} below T - 1.

    Every skipped step then has at least order + 1 real steps before it, as
    ``ExtrapolatedEulerSampler`` requires.

    Raises:
        Nothing of its own (the arguments are not validated).
    """
    return list(range(order + 1, steps - 1, 2))

