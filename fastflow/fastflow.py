"""FastFlow: Euler sampling that skips model calls by extrapolating the velocity from earlier
real evaluations (Bajpai et al., ICLR 2026), with the skips chosen by a policy.

Time convention: t = 0 is noise, t = 1 is data, grid t_k = k / T (or any ``times``), Euler update
x_{k+1} = x_k + dt_k * v_k. On a skipped step v_k is not computed but extrapolated, by
``fastflow.extrapolate.newton_extrapolate``, from the p + 1 most recent real evaluations
(p = ``order``). Errors are relative, e = ||v_hat - v|| / ||v|| over the batch
(``fastflow.errors``).

``base="ab2"`` replaces the Euler update by second-order Adams-Bashforth on the same velocities,
real or extrapolated: x_{k+1} = x_k + dt_k (b_0 v_k + b_1 v_{k-1}) (Euler at k = 0; variable-step
b on uneven grids). An extrapolation error eps_j enters two updates with weights b_0 and b_1,
which sum to 1, so the deviation from the full AB2 run obeys the same bound as for Euler,
|dev| <= C e^L sum_j dt_j |eps_j| with C = |b_0| + |b_1| (2 on a uniform grid): the same table and
plans apply. Against the exact flow the error is AB2's O(1/T^2) plus the skips' O(|S| / T^(p+2)),
so a plan that skips a fixed share of the steps keeps second order (Euler: first).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from . import checks
from .atomic import atomic_write
from .controller import DEFAULT_MAX_RUN, DEFAULT_TOLERANCE, POLICIES, SkipController
from .extrapolate import History, check_order
from .field import VelocityField
from .specs import PaperBandit, PolicySpec
from .result import SampleResult
from .solvers import AB_COEFFICIENTS, EulerSampler, ab_coefficients

__all__ = ["ExtrapolatedEulerSampler", "extrapolated_euler", "FastFlowSampler", "DEFAULT_TOLERANCE", "DEFAULT_MAX_RUN",
           "POLICIES"]

SCHEDULE_FORMAT = "fastflow-skip-schedule"
BASES = ("euler", "ab2")


class _BaseStep(EulerSampler):
    """The update shared by the skipping samplers: Euler, or AB2 (``base="ab2"``) on the velocities
    the skip rule returns. The run state must have a ``prev`` attribute (the last velocity used)."""

    keeps_outputs = True  # the last p + 1 real velocities, for extrapolation

    def _set_base(self, base: str) -> None:
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        self.base = base
        t = self.times.tolist()
        self._ab2 = [(1.0,) if k == 0 else (AB_COEFFICIENTS[2] if self.uniform else
                                           tuple(ab_coefficients([t[k], t[k - 1]], t[k], t[k + 1])))
                     for k in range(self.steps)]

    def step(self, field, state, k, x):
        v = self.velocity(field, state, k, x)
        if self.base == "euler":
            return x + field.dt(k) * v
        coeffs, prev = self._ab2[k], state.prev
        state.prev = v
        return x + field.dt(k) * (v if len(coeffs) == 1 else coeffs[0] * v + coeffs[1] * prev)


@dataclass
class _FixedRun:
    """Per-call state of a fixed-schedule run: the last real velocities, and the last velocity used."""

    history: History
    prev: Optional[torch.Tensor] = None


class ExtrapolatedEulerSampler(_BaseStep):
    """Euler on a grid (uniform, or ``times``) where the steps in ``skip`` use an extrapolated velocity.

    A step k can be skipped only if at least ``order + 1`` real evaluations precede it,
    so step 0 is never skippable. ``base="ab2"`` integrates with AB2 instead of Euler (module
    docstring). A run makes exactly T - |skip| model calls and takes no
    decision at run time. ``save``/``load`` keep the schedule as JSON.

    Time convention: t = 0 noise, t = 1 data. On a skipped step k, v_k is the order-p Newton
    polynomial through the last p + 1 real evaluations, evaluated at t_k (``fastflow.extrapolate``).

    Args:
        steps: T, or an increasing (T + 1,) grid; or give ``times`` (see ``Sampler``).
        skip: the step indices S whose velocity is extrapolated.
        order: extrapolation order p, an int >= 1.
        times: any strictly monotone grid (T + 1,) inside [0, 1] (``fastflow.grids``).
        base: ``"euler"`` or ``"ab2"`` (module docstring).

    ``SampleResult.info`` keys: ``host_reads`` (1 for the finiteness check, 0 with
    ``check=False``); ``result.skipped`` is sorted(S) and ``nfe`` is T - |S|.

    Raises:
        ValueError: for a skip step that is not an int in [0, T - 1] or has too few real steps
            before it, an ``order`` that is not an int >= 1, an unknown ``base``, or a bad grid.
        TypeError: for a grid given twice or not at all, a ``steps`` that is not an int, or a
            ``skip`` that is not an iterable of hashable, mutually comparable values.
    """

    def __init__(self, steps: Optional[int], skip: Iterable[int], order: int = 1, *, times=None,
                 base: str = "euler"):
        super().__init__(steps, times=times)
        self._set_base(base)
        steps = self.steps
        self.order = check_order(order)
        skip = sorted(set(skip))
        for i, k in enumerate(skip):
            if not checks.is_int(k) or not 0 <= k < steps:
                raise ValueError(f"skip steps must be ints in [0, {steps - 1}], got {k!r}")
            real_before = k - i  # steps before k that are evaluated
            if real_before < order + 1:
                raise ValueError(f"cannot skip step {k}: order-{order} extrapolation needs {order + 1} "
                                 f"real evaluations before it, only {real_before} precede it")
        self.skip = frozenset(skip)

    def expected_calls(self) -> int:
        """Model calls per run: T - |skip|."""
        return self.steps - len(self.skip)

    def start(self, field):
        """The run state: an empty history of the last order + 1 real evaluations."""
        return _FixedRun(History(self.order + 1))

    def velocity(self, field, run, k, x):
        """The extrapolated velocity at t_k if k is in ``skip`` (no model call), else the model at
        (x_k, t_k), recorded in the history.

        Raises:
            ValueError: for a model output that is not a tensor of the shape of x (``VelocityField``).
        """
        if k in self.skip:
            field.mark_skipped(k)
            return run.history.extrapolate(field.t(k), self.order)
        v = field.at(k, x)
        run.history.append(field.t(k), v)
        return v

    def state_dict(self) -> dict:
        """The schedule as plain JSON-able data: ``format``, ``steps``, ``order``, ``skip``, and
        ``times`` (uneven grids) and ``base`` (other than Euler) when they differ from the default."""
        state = {"format": SCHEDULE_FORMAT, "steps": self.steps, "order": self.order, "skip": sorted(self.skip)}
        if not self.uniform:
            state["times"] = self.times.tolist()
        if self.base != "euler":
            state["base"] = self.base
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> "ExtrapolatedEulerSampler":
        """Build the sampler a ``state_dict`` describes.

        Raises:
            ValueError: for a state without the schedule ``format`` or a list ``skip``, a ``steps``
                that is not an int in [2, 100000] (without ``times``) or more ``times`` than that,
                or values the constructor refuses (a bad skip step, order, base or grid).
            TypeError: for unhashable skip entries (as the constructor).
        """
        if not isinstance(state, dict) or state.get("format") != SCHEDULE_FORMAT:
            raise ValueError(f"not a skip schedule (missing 'format': '{SCHEDULE_FORMAT}')")
        if not isinstance(state.get("skip"), list):
            raise ValueError("skip schedule has no list 'skip'")
        if state.get("times") is None:  # bound the grid before anything is allocated for it
            checks.int_in("steps", state.get("steps"), 2, checks.MAX_STEPS)
        elif not isinstance(state["times"], list) or len(state["times"]) > checks.MAX_STEPS + 1:
            raise ValueError(f"'times' must be a list of at most {checks.MAX_STEPS + 1} grid points")
        return cls(state.get("steps"), state["skip"], state.get("order"), times=state.get("times"),
                   base=state.get("base", "euler"))

    def save(self, path: str | os.PathLike) -> None:
        """Write the schedule (``state_dict``) as JSON, atomically.

        Raises:
            OSError: naming ``path`` when it cannot be written (``fastflow.atomic.atomic_write``).
        """
        atomic_write(path, lambda f: json.dump(self.state_dict(), f), binary=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExtrapolatedEulerSampler":
        """Read a schedule written by ``save``.

        Raises:
            ValueError: naming the file, for one that is not UTF-8 JSON or not a valid schedule
                (the errors of ``from_state_dict``, TypeError included).
            OSError: when the file cannot be read (e.g. FileNotFoundError).
        """
        try:
            with open(path, "rb") as f:
                state = json.loads(f.read().decode("utf-8"))
            return cls.from_state_dict(state)
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        base = "" if self.base == "euler" else f", base='{self.base}'"
        return f"ExtrapolatedEulerSampler({self.grid_repr()}, skipped={len(self.skip)}, order={self.order}{base})"


def extrapolated_euler(velocity, x_init: torch.Tensor, steps, skip: Iterable[int],
                       order: int = 1, **extras) -> SampleResult:
    """Euler from t = 0 (noise) to t = 1 (data) with the steps in ``skip`` extrapolated.

    Args:
        velocity: ``velocity(x=x, t=t, **extras)``, x of shape (batch, ...), t of shape (batch,).
        x_init: noise, shape (batch, ...).
        steps: T, number of uniform steps, or a grid (T + 1,) from ``fastflow.grids``.
        skip: the set S of step indices whose velocity is extrapolated (no model call).
        order: order p of the finite-difference extrapolation (p + 1 real points).
        **extras: passed to ``sample`` (``trace``, ``check``, ``model_kwargs``) and from there to
            every ``velocity`` call.

    Returns:
        SampleResult with nfe == T - |S| and skipped == sorted(S).

    Raises:
        ValueError: as ``ExtrapolatedEulerSampler`` (a bad skip step, order or grid) and its
            ``sample`` (a bad ``x_init``, a velocity of the wrong shape or not finite, ...).
        TypeError: as ``ExtrapolatedEulerSampler`` (a bad ``steps``), or a ``velocity`` that is
            not callable.
    """
    return ExtrapolatedEulerSampler(steps, skip, order).sample(velocity, x_init, **extras)


class FastFlowSampler(_BaseStep):
    """Euler that extrapolates the velocity on the steps its skip policy picks.

    The first call is a full Euler run (nfe == T), the **calibration run**: it records the
    error table (``fastflow.errors``: what every skip would have cost, as relative error)
    and Euler's own local errors eta_k = |v_{k+1} - v_k| / (2 |v_k|), then builds the
    policy. Later calls sample with the policy and, for the learning policies, update it
    once at the end of the run (a failed run changes nothing).

    The knob is a number of model calls or a tolerance, never an error scale:

    * ``calls=K``: every plan makes exactly K model calls per run (the paper bandit meets K
      on average, its mu being a Lagrange multiplier).
    * ``tolerance=tau`` (dimensionless): the fewest calls K whose optimal plan's summed
      error stays at or below tau * sum_k eta_k, i.e. the skips may add at most tau times the
      error that Euler-T itself makes against the exact flow (both estimated on the
      calibration run, in the same units: dt |v| times a relative velocity error).
    * neither: ``tolerance=DEFAULT_TOLERANCE``.

    Policies (``policy=``, a spec of ``fastflow.specs`` or its shorthand string):

    * ``Plan()``, ``"plan"`` (default): the exact optimum of ``fastflow.plan_skips`` on the
      calibration table, played on every run. No decision cost beyond a dict lookup, no host reads.
    * ``PlanningBandit(explore)``, ``"bandit"``: re-plans after each run from an optimistic
      running estimate of the table (``fastflow.bandit.ErrorTableUCB``).
    * ``PaperBandit(arms, mu, kind, c, ..., normalize, generator)``, ``"paper"``: the paper's
      per-step bandits (``fastflow.policy.PaperBanditPolicy``), reward (mu * m - e) / scale. The
      paper's own configuration (raw reward, calibrated mu = max_k e_k / T over one-step-ahead
      errors, UCB1 with c = 2) is ``FastFlowSampler.paper(steps)``.

    With a string, the spec's settings may be given as flat keywords (``mu``, ``arms``,
    ``bandit``, ``normalize_rewards``, ``generator``, ``c``, ``epsilon``, ``prior_var`` for the
    paper policy, ``explore`` for the planning bandit); without ``policy``, a paper keyword
    selects the paper policy. A keyword of another policy is an error (``fastflow.specs.policy_spec``).

    Runs of skips are at most ``max_run`` long (``max(arms)`` for the paper policy); steps
    0..p and T - 1 are always real.

    Args:
        steps: T (uniform grid), or give ``times``.
        calls: model calls per run, in [min_calls(T, p, max_run), T].
        tolerance: > 0, relative to Euler-T's own error (see above).
        policy: a spec (``Plan()``, ``PlanningBandit()``, ``PaperBandit()``) or ``"plan"``,
            ``"bandit"``, ``"paper"``.
        extrapolation_order: p, an int in [1, 16] (default 1); ``order`` is an alias.
        max_run: longest run of skips for the plan and bandit policies (default ``DEFAULT_MAX_RUN``).
        times: any strictly monotone grid (T + 1,) inside [0, 1] (``fastflow.grids``). On an uneven grid every error
            of step j (table, observations, eta_j) is weighted by T dt_j, so the summed error
            stays the deviation bound's sum_j dt_j |v_hat_j - v_j| in relative units; on the
            uniform grid the weights are 1.
        base: ``"euler"`` (the paper's) or ``"ab2"``: the update the velocities feed (module
            docstring). With ``"ab2"`` the calibration run is a full AB2 run and the tolerance is
            relative to AB2's own local error, eta_k = (5/12) |v_{k+1} - 2 v_k + v_{k-1}| / |v_k|.
        **settings: a string policy's settings as flat keywords (above).

    Raises:
        ValueError: for a step count below p + 3, an order that is not an int in [1, 16] (or
            ``order`` and ``extrapolation_order`` that differ), an unknown policy or base, a
            setting of another policy or beside a spec, bad spec settings (``fastflow.specs``),
            both ``calls`` and ``tolerance``, a ``calls`` that is not an int in [p + 2, T] or that
            no plan can meet (below ``min_calls``), a tolerance that is not a finite number > 0, a
            ``max_run`` that is not an int in [1, T] (or, for the paper policy, differs from
            max(arms)), or a bad grid. ``sample`` raises it too when the calibration run gives NaN
            extrapolation errors (nothing is learned then), besides ``Sampler.sample``'s errors.
        TypeError: for a grid given twice or not at all, a ``steps`` that is not an int, a
            keyword no policy takes, or a hyperparameter the paper policy's bandit does not take.

    ``SampleResult.info`` keys: ``policy``, ``calibration_run`` (bool), ``calls_target`` (K,
    None before calibration), ``decisions`` ((k, m) pairs: m steps extrapolated after real
    step k), ``mu`` (paper policy), ``host_reads`` (device-to-host reads made by the
    sampler's bookkeeping in this run: the finiteness check's one read, plus one for the calibration table
    or a learning policy's errors; the plan policy adds none), ``update`` (what a learning policy
    learned from this run, as plain data for ``apply_updates``; None for the calibration run and
    the plan policy).
    """

    def __init__(self, steps: Optional[int] = None, calls: Optional[int] = None, tolerance: Optional[float] = None,
                 policy: "PolicySpec | str | None" = None, extrapolation_order: Optional[int] = None,
                 max_run: Optional[int] = None, *, times=None, base: str = "euler", order: Optional[int] = None,
                 **settings):
        super().__init__(steps, times=times)
        self._set_base(base)
        if order is not None and extrapolation_order is not None and order != extrapolation_order:
            raise ValueError(f"order is an alias of extrapolation_order: got {order} and {extrapolation_order}")
        p = next((o for o in (extrapolation_order, order) if o is not None), 1)
        span = abs(float(self.times[-1] - self.times[0]))
        # per-step error weights T |dt_j| / |t_T - t_0| (None on the uniform grid: all 1)
        weights = None if self.uniform else (self.steps * self.times.diff().abs() / span).tolist()
        self.skips = SkipController(self.steps, calls=calls, tolerance=tolerance, policy=policy, order=p,
                                    max_run=max_run, weights=weights, base=base, **settings)
        self._calibrating = False

    # settings and what was learned live in the controller; these read them
    extrapolation_order = property(lambda self: self.skips.order, doc="Extrapolation order p.")
    order = property(lambda self: self.skips.order, doc="Alias of ``extrapolation_order``.")
    spec = property(lambda self: self.skips.spec, doc="The policy's settings (``fastflow.specs``).")
    max_run = property(lambda self: self.skips.max_run, doc="Longest run of skips R.")
    calls = property(lambda self: self.skips.calls, doc="The call budget K given (None for a tolerance).")
    tolerance = property(lambda self: self.skips.tolerance, doc="The tolerance given or defaulted (None for calls).")
    policy_name = property(lambda self: self.skips.policy_name, doc="``'plan'``, ``'bandit'`` or ``'paper'``.")
    policy = property(lambda self: self.skips.policy, doc="The live policy (None before calibration).")
    table = property(lambda self: self.skips.table, doc="The calibration run's error table (None before).")
    euler_errors = property(lambda self: self.skips.euler_errors,
                            doc="The calibration run's estimates of the base solver's local errors (None before).")
    calls_target = property(lambda self: self.skips.calls_target, doc="K chosen at calibration (None before).")
    generator = property(lambda self: getattr(self.spec, "generator", None),
                         doc="The policy's torch.Generator (None for a policy that draws no random numbers).")
    weights = property(lambda self: self.skips.weights or [1.0] * self.steps, doc="Per-step error weights T dt_j.")

    @classmethod
    def paper(cls, steps: int, **kwargs) -> "FastFlowSampler":
        """The paper's configuration: per-step UCB1 (c = 2), raw reward mu * m - e, mu calibrated
        on the first run as max_k e_k / T (one-step-ahead errors e_k), arms 0..4.

        ``kwargs``: the spec's ``arms``, ``mu`` and ``generator``, and the constructor's own
        keywords (``calls``, ``extrapolation_order``, ``times``, ...).

        Raises:
            ValueError: as the constructor, for a bad value in ``kwargs``.
            TypeError: for a keyword this method sets itself (``policy``, ``normalize_rewards``,
                ``bandit``, ``c``), or a bad ``steps`` (as the constructor).
        """
        fixed = sorted({"policy", "normalize_rewards", "bandit", "c"} & set(kwargs))
        if fixed:
            raise TypeError(f"FastFlowSampler.paper sets {', '.join(fixed)} itself")
        own = {k: kwargs.pop(k) for k in ("arms", "mu", "generator") if k in kwargs}
        return cls(steps, policy=PaperBandit(kind="ucb1", c=2.0, normalize=False, **own), **kwargs)

    @property
    def calibrated(self) -> bool:
        """Whether the calibration run has been made (or a calibrated state loaded)."""
        return self.skips.calibrated

    @property
    def mu(self) -> Optional[float]:
        """The paper policy's current reward per skip (its given mu before calibration; None for
        the other policies)."""
        return getattr(self.policy, "mu", None) if self.calibrated else getattr(self.spec, "mu", None)

    def expected_calls(self) -> Optional[int]:
        """Model calls per run: T before calibration (the calibration run), K after (the paper
        policy meets K on average; None if it has no budget)."""
        return self.steps if not self.calibrated else self.calls_target

    # -- calibration -----------------------------------------------------------------

    def calibrate(self, velocity, x_init: torch.Tensor, replay: bool = False, **kwargs) -> SampleResult:
        """Make the calibration run now, explicitly: a full run of the base solver (nfe == T) that
        records the error table and builds the policy, replacing any earlier calibration. Takes
        ``sample``'s arguments and returns its result. ``sample`` calibrates on first use anyway.

        ``replay=True`` then checks the plan before it is trusted (``replay_check``): it replays the
        schedule and Euler with as many calls on ``x_init`` (2K more model calls) and reports both
        deviations from the calibration run in ``info["replay"]``, warning when the plan's is larger.

        Raises:
            ValueError: as ``sample`` (a bad or empty ``x_init``, a velocity of the wrong shape or
                not finite, NaN table entries); nothing is learned then and an earlier calibration
                is kept.
        """
        self._calibrating = True
        try:
            result = self.sample(velocity, x_init, **kwargs)
        finally:
            self._calibrating = False
        if replay:
            result.info["replay"] = self.replay_check(velocity, x_init, result.x, **kwargs)
        return result

    def replay_check(self, velocity, x_init: torch.Tensor, reference: torch.Tensor, **kwargs) -> dict:
        """Replay the current schedule (K calls) and Euler with K steps on the same span from
        ``x_init``, and measure each one's relative deviation ||x - x_ref|| / ||x_ref|| from
        ``reference``, the full base-solver run from ``x_init`` (the calibration run's result). The
        table scores a plan by summed one-step errors; a long run of extrapolated steps can still be
        unstable, and only a replay shows it. Warns (``RuntimeWarning``) when the plan deviates more
        than Euler-K. Returns ``calls``, ``plan_deviation``, ``euler_deviation``, ``trusted``.

        Raises:
            ValueError: before calibration, or as ``sample`` for a bad ``x_init`` or velocity.
        """
        frozen = self.freeze()
        K = frozen.expected_calls()
        t0, t1 = float(self.times[0]), float(self.times[-1])
        coarse = EulerSampler(times=torch.linspace(t0, t1, K + 1, dtype=torch.float64)) if K >= 2 else None
        ref = reference.double()

        def deviation(x):
            return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))
        plan = deviation(frozen.sample(velocity, x_init, **kwargs).x)
        euler = deviation(coarse.sample(velocity, x_init, **kwargs).x) if coarse is not None else math.inf
        trusted = plan <= euler
        if not trusted:
            warnings.warn(f"FastFlow's plan with {K} calls deviates {plan:.3g} from the full run, more than Euler "
                          f"with {K} steps ({euler:.3g}): try a lower extrapolation order or more calls",
                          RuntimeWarning, stacklevel=2)
        return {"calls": K, "plan_deviation": plan, "euler_deviation": euler, "trusted": trusted}

    # -- the step rule ---------------------------------------------------------------

    def start(self, field):
        """The run state: a ``SkipRun`` of the controller (a calibration run before calibration)."""
        calibrate = True if self._calibrating else None
        return self.skips.begin(field.grid[:field.steps], calibrate=calibrate)  # t_0..t_{T-1}

    def velocity(self, field: VelocityField, run, k: int, x: torch.Tensor) -> torch.Tensor:
        """The velocity of step k: inside a run of skips, the order-p extrapolation at t_k (no
        model call); else the model at (x_k, t_k), handed to the run (``SkipRun.real``).

        Raises:
            ValueError: for a model output that is not a tensor of the shape of x (``VelocityField``).
        """
        if run.skipping():
            field.mark_skipped(k)
            return run.extrapolate(k, field.t(k))
        v = field.at(k, x)
        run.real(k, field.t(k), v)
        return v

    def finish(self, field, run):
        """End the run in the controller (``SkipController.end``): build the policy after the
        calibration run, else learn from the run or queue its update. Returns the info keys of
        the class docstring.

        Raises:
            ValueError: when the calibration run's table has NaN entries (nothing is set then).
        """
        return self.skips.end(run, field.nfe)

    # -- learning in rounds (several batches, or several processes, from one state) ----

    def deferred_updates(self):
        """Runs inside this block all play the policy's state as it was when the block began;
        what each run learned is queued, in run order, in the yielded list instead of applied.
        Each update is plain JSON-able data (``info["update"]`` of its run, None for a policy
        that learns nothing): apply them with ``apply_updates``, here or in another process.

        Raises:
            ValueError: on entry, if the sampler is not calibrated (a calibration run cannot be
                deferred: it builds the policy), or inside another ``deferred_updates`` block
                (they do not nest).
        """
        return self.skips.deferred_updates()

    def apply_updates(self, updates: Sequence[Optional[dict]]) -> None:
        """Learn from finished runs, in the given order, as if each had just ended here (``None``
        entries are skipped), all or nothing (``SkipController.apply_updates``). Each update is
        ``{"observations": [[k, gaps, lead, error], ...], "nfe": calls}``.

        Raises:
            ValueError: before calibration, or for a malformed update or one the policy refuses
                (nothing is applied then).
        """
        self.skips.apply_updates(updates)

    # -- inspection ------------------------------------------------------------------

    def schedule(self) -> list[int]:
        """The skip set the policy would play now without exploring.

        Raises:
            ValueError: before calibration (or, for the bandit policy, if no plan with K calls
                has a finite error on the running estimate).
        """
        return self.skips.schedule()

    def freeze(self) -> ExtrapolatedEulerSampler:
        """What was learned, as a fixed schedule: no decisions at run time, reproducible,
        savable (``ExtrapolatedEulerSampler.save``).

        Raises:
            ValueError: before calibration (see ``schedule``).
        """
        return ExtrapolatedEulerSampler(self.steps, self.schedule(), self.order, times=self.times, base=self.base)

    def planned_error(self, skip: Optional[Iterable[int]] = None) -> float:
        """Summed table error of a skip set (default: the current schedule), relative to the
        calibration run's estimate of the base solver's own error sum_k eta_k.

        Raises:
            ValueError: before calibration, or for a skip set ``plan_cost`` refuses.
        """
        return self.skips.planned_error(skip)

    # -- persistence -----------------------------------------------------------------

    def _grid(self) -> dict:
        return {"steps": self.steps, "times": None if self.uniform else self.times.tolist(), "base": self.base}

    def state_dict(self) -> dict:
        """The state as plain JSON-able data (``SkipController.state_dict``): ``format``,
        ``version``, the grid (``steps``, ``times``, ``base``), the settings (``order``, ``arms``,
        ``max_run``, ``policy``, ``calls``, ``tolerance``, ``bandit``, ``normalize_rewards``),
        ``calibrated``, and once calibrated the table, ``euler_errors``, ``calls_target`` and
        the policy's own state."""
        return self.skips.state_dict(self._grid())

    def load_state_dict(self, state: dict) -> None:
        """Restore a state; nothing changes unless all of it is valid.

        Raises:
            ValueError: naming the field, for another format or version, a state learned by a
                differently configured sampler, or any malformed value.
        """
        self.skips.load_state_dict(state, self._grid())

    def save_state(self, path: str | os.PathLike, tag: Optional[str] = None) -> None:
        """Write the state (calibration table, policy, learned statistics) as JSON, atomically.

        The file records what the state was learned with: the sampler's settings (grid, order,
        arms, policy, budget, bandit), checked by ``load_state``, and ``tag``, a string of yours
        for what the sampler cannot see, e.g. ``"dit_mnist.pt cfg=1.5 256px"``: a state is an
        error table of one model at one guidance scale, labels mix and resolution.

        Raises:
            ValueError: for a tag that is not a string or None.
            OSError: naming ``path`` when it cannot be written.
        """
        self.skips.save_state(path, self._grid(), tag)

    def load_state(self, path: str | os.PathLike, tag: Optional[str] = None) -> None:
        """Load a state written by ``save_state``, refusing one learned with other settings or
        under another ``tag`` (both None counts as a match).

        Raises:
            ValueError: naming the file, for a corrupt, non-UTF-8 or mismatched file, or a tag
                that differs from the one it was saved with.
            OSError: when the file cannot be read (e.g. FileNotFoundError).
        """
        self.skips.load_state(path, self._grid(), tag)

    def __repr__(self) -> str:
        knob = f"calls={self.calls}" if self.calls is not None else (
            f"tolerance={self.tolerance}" if self.tolerance is not None else f"mu={self.spec.mu}")
        base = "" if self.base == "euler" else f", base='{self.base}'"
        return f"FastFlowSampler({self.grid_repr()}, policy='{self.policy_name}', {knob}, order={self.order}{base})"
