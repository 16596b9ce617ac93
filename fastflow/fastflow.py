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

import contextlib
import json
import math
import os
from dataclasses import dataclass, field as dc_field
from typing import Iterable, Optional, Sequence

import torch

from .atomic import atomic_write
from .bandit import BANDITS
from .errors import TableRecorder, relative_error, table_shape
from .extrapolate import History, check_order
from .field import VelocityField
from .plan import min_calls, plan_cost, plan_skips, planned_costs
from .policy import Observation, PaperBanditPolicy, PlanningBanditPolicy, PlanPolicy, SkipPolicy, runs_after
from .result import SampleResult
from .solvers import AB_COEFFICIENTS, EulerSampler, ab_coefficients

__all__ = ["ExtrapolatedEulerSampler", "extrapolated_euler", "FastFlowSampler", "DEFAULT_TOLERANCE", "DEFAULT_MAX_RUN",
           "POLICIES"]

STATE_FORMAT = "fastflow-bandit-state"
STATE_VERSION = 2
SCHEDULE_FORMAT = "fastflow-skip-schedule"
BASES = ("euler", "ab2")
POLICIES = ("plan", "bandit", "paper")
DEFAULT_TOLERANCE = 1.0
DEFAULT_MAX_RUN = 6


class _BaseStep(EulerSampler):
    """The update shared by the skipping samplers: Euler, or AB2 (``base="ab2"``) on the velocities
    the skip rule returns. The run state must have a ``prev`` attribute (the last velocity used)."""

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
        times: any grid (T + 1,) from 0 to 1 (``fastflow.grids``).
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
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < steps:
                raise ValueError(f"skip steps must be ints in [0, {steps - 1}], got {k!r}")
            real_before = k - i  # steps before k that are evaluated
            if real_before < order + 1:
                raise ValueError(f"cannot skip step {k}: order-{order} extrapolation needs {order + 1} "
                                 f"real evaluations before it, only {real_before} precede it")
        self.skip = frozenset(skip)

    def start(self, field):
        """The run state: an empty history of the last order + 1 real evaluations."""
        return _Run(history=History(self.order + 1), recorder=None)

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
            ValueError: for a state without the schedule ``format`` or a list ``skip``, or values
                the constructor refuses (a bad skip step, order, base or grid).
            TypeError: for a missing ``steps`` (without ``times``), a non-int ``steps``, or
                unhashable skip entries (as the constructor).
        """
        if not isinstance(state, dict) or state.get("format") != SCHEDULE_FORMAT:
            raise ValueError(f"not a skip schedule (missing 'format': '{SCHEDULE_FORMAT}')")
        if not isinstance(state.get("skip"), list):
            raise ValueError("skip schedule has no list 'skip'")
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


@dataclass
class _Run:
    """Per-call state of a FastFlow run."""

    history: History
    recorder: Optional[TableRecorder]           # the calibration run's error table, else None
    reals: list = dc_field(default_factory=list)
    remaining: int = 0                          # skips left in the current run of skips
    pending: Optional[tuple] = None             # (k, gaps, m): decision awaiting its run-end error
    observed: list = dc_field(default_factory=list)   # (k, gaps, lead, 0-d error tensor)
    decisions: list = dc_field(default_factory=list)
    prev: Optional[torch.Tensor] = None         # the last velocity used (AB2 base)


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
    return value


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

    Policies (``policy=``):

    * ``"plan"`` (default): the exact optimum of ``fastflow.plan_skips`` on the calibration
      table, played on every run. No decision cost beyond a dict lookup, no host reads.
    * ``"bandit"``: a planning bandit; re-plans after each run from an optimistic running
      estimate of the table (``fastflow.bandit.ErrorTableUCB``, exploration ``explore``).
    * ``"paper"``: the paper's per-step bandits (``fastflow.policy.PaperBanditPolicy``) with
      arms ``arms``, reward (mu * m - e) / scale. The paper's own configuration (raw reward,
      calibrated mu = max_k e_k / T over one-step-ahead errors, UCB1 with c = 2) is
      ``FastFlowSampler.paper(steps)``. If ``policy`` is omitted and ``mu`` is given, the
      policy is ``"paper"`` (mu means nothing to the others); likewise if ``bandit`` or a
      bandit hyperparameter is given.

    Runs of skips are at most ``max_run`` long (``max(arms)`` for the paper policy); steps
    0..p and T - 1 are always real.

    Args:
        steps: T (uniform grid), or give ``times``.
        calls: model calls per run, in [min_calls(T, p, max_run), T].
        tolerance: > 0, relative to Euler-T's own error (see above).
        policy: ``"plan"``, ``"bandit"`` or ``"paper"``.
        arms: the paper bandit's arms (run lengths); its runs are at most max(arms) long.
        mu: the paper bandit's reward per skipped step (relative-error units); None calibrates
            it (or, with a budget, starts the Lagrange multiplier at the plan's mean error per skip).
        order: extrapolation order p.
        bandit: the paper policy's bandit, ``"ucb1"``, ``"epsilon-greedy"`` or ``"thompson"``.
        normalize_rewards: the paper policy divides rewards by mu * max(arms).
        generator: torch.Generator for randomised bandits (UCB1 and the plans need none).
        explore: the planning bandit's exploration constant c.
        max_run: longest run of skips for the plan and bandit policies (default ``DEFAULT_MAX_RUN``).
        base: ``"euler"`` (the paper's) or ``"ab2"``: the update the velocities feed (module
            docstring). With ``"ab2"`` the calibration run is a full AB2 run and the tolerance is
            relative to AB2's own local error, eta_k = (5/12) |v_{k+1} - 2 v_k + v_{k-1}| / |v_k|.
        times: any grid (T + 1,) from 0 to 1 (``fastflow.grids``). On an uneven grid every error
            of step j (table, observations, eta_j) is weighted by T dt_j, so the summed error
            stays the deviation bound's sum_j dt_j |v_hat_j - v_j| in relative units; on the
            uniform grid the weights are 1.
        **bandit_kwargs: hyperparameters of the paper policy's bandit (``c``, ``epsilon``, ``prior_var``).

    Raises:
        ValueError: for bad arms (empty, not non-negative ints, repeated, or none >= 1), a
            negative or non-finite mu, an order that is not an int >= 1, an unknown policy,
            base or bandit, a bandit, its hyperparameters or mu given to a policy other than
            ``"paper"``, both ``calls`` and ``tolerance``, a ``calls`` that is not an int in
            [p + 2, T] or that no plan can meet (below ``min_calls``), a tolerance that is not a
            finite number > 0, a ``max_run`` that is not an int in [1, T] (or, for the paper
            policy, differs from max(arms)), an explore < 0, a bad hyperparameter value
            (``make_bandit``), or a bad grid. ``sample`` raises it too when the calibration run
            gives NaN extrapolation errors (nothing is learned then), besides ``Sampler.sample``'s
            errors.
        TypeError: for a grid given twice or not at all, a ``steps`` that is not an int, or a
            hyperparameter the paper policy's bandit does not take.

    ``SampleResult.info`` keys: ``policy``, ``calibration_run`` (bool), ``calls_target`` (K,
    None before calibration), ``decisions`` ((k, m) pairs: m steps extrapolated after real
    step k), ``mu`` (paper policy), ``host_reads`` (device-to-host reads made by the
    sampler's bookkeeping in this run: the finiteness check's one read, plus one for the calibration table
    or a learning policy's errors; the plan policy adds none), ``update`` (what a learning policy
    learned from this run, as plain data for ``apply_updates``; None for the calibration run and
    the plan policy).
    """

    def __init__(self, steps: Optional[int] = None, calls: Optional[int] = None, tolerance: Optional[float] = None,
                 policy: Optional[str] = None, arms: Sequence[int] = (0, 1, 2, 3, 4), mu: Optional[float] = None,
                 order: int = 1, bandit: Optional[str] = None, normalize_rewards: bool = True,
                 generator: Optional[torch.Generator] = None, explore: float = 0.5,
                 max_run: Optional[int] = None, times=None, base: str = "euler", **bandit_kwargs):
        super().__init__(steps, times=times)
        self._set_base(base)
        steps = self.steps
        # per-step error weights T dt_j (all 1 on the uniform grid)
        self.weights = [1.0] * steps if self.uniform else (steps * self.times.diff()).tolist()
        arms = tuple(arms)
        if not arms or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in arms):
            raise ValueError(f"arms must be a non-empty sequence of non-negative ints, got {arms}")
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms must be distinct, got {arms}")
        if max(arms) < 1:
            raise ValueError(f"arms must allow at least one skip (max(arms) >= 1), got {arms}")
        if mu is not None and not (isinstance(mu, (int, float)) and math.isfinite(mu) and mu >= 0):
            raise ValueError(f"mu must be finite and >= 0, or None, got {mu}")
        if bandit is not None and bandit not in BANDITS:
            raise ValueError(f"unknown bandit '{bandit}', choose from {sorted(BANDITS)}")
        if policy is None:  # mu, a bandit or its hyperparameters only mean something to the paper policy
            policy = "paper" if (mu is not None or bandit is not None or bandit_kwargs) else "plan"
        if policy != "paper" and (bandit is not None or bandit_kwargs):
            raise ValueError(f"bandit and its hyperparameters belong to the paper policy, not '{policy}'")
        bandit = bandit or "ucb1"
        if policy not in POLICIES:
            raise ValueError(f"unknown policy '{policy}', choose from {list(POLICIES)}")
        if mu is not None and policy != "paper":
            raise ValueError(f"mu is the paper bandit's reward per skip; policy '{policy}' takes calls or tolerance")
        if calls is not None and tolerance is not None:
            raise ValueError("give calls or tolerance, not both")
        self.order = check_order(order)
        if policy == "paper":
            if max_run is not None and max_run != max(arms):
                raise ValueError(f"the paper policy's runs are its arms: max_run={max_run} != max(arms)={max(arms)}")
            self.max_run = max(arms)
        else:
            self.max_run = DEFAULT_MAX_RUN if max_run is None else _check_int("max_run", max_run, 1, steps)
        if calls is not None:
            lo = min_calls(steps, self.order, self.max_run)
            if isinstance(calls, bool) or not isinstance(calls, int) or not self.order + 2 <= calls <= steps:
                raise ValueError(f"calls must be an int in [{self.order + 2}, {steps}] (order + 2 to steps), "
                                 f"got {calls!r}")
            if calls < lo:
                raise ValueError(f"calls={calls} is too few for steps={steps} with runs of at most "
                                 f"{self.max_run} skips: at least {lo} are needed")
        if tolerance is not None and not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance)
                                          and tolerance > 0):
            raise ValueError(f"tolerance must be a finite number > 0, got {tolerance!r}")
        if policy != "paper" and calls is None and tolerance is None:
            tolerance = DEFAULT_TOLERANCE  # the paper bandit without a budget keeps a fixed or calibrated mu
        self.tolerance = tolerance
        if not explore >= 0:
            raise ValueError(f"explore must be >= 0, got {explore}")
        self.calls, self.policy_name, self.arms, self.mu_init = calls, policy, arms, mu
        self.bandit_kind, self.normalize_rewards, self.generator = bandit, normalize_rewards, generator
        self.explore, self.bandit_kwargs = explore, dict(bandit_kwargs)
        if policy == "paper":
            from .bandit import make_bandit
            make_bandit(bandit, len(arms), **bandit_kwargs)  # validate the hyperparameters now
        self.policy: Optional[SkipPolicy] = None
        self.table: Optional[torch.Tensor] = None
        self.euler_errors: Optional[torch.Tensor] = None
        self.calls_target: Optional[int] = None
        self._deferred: Optional[list] = None

    @classmethod
    def paper(cls, steps: int, **kwargs) -> "FastFlowSampler":
        """The paper's configuration: per-step UCB1 (c = 2), raw reward mu * m - e, mu calibrated
        on the first run as max_k e_k / T (one-step-ahead errors e_k), arms 0..4.

        ``kwargs`` go to the constructor (``calls``, ``mu``, ``order``, ``times``, ...).

        Raises:
            ValueError: as the constructor, for a bad value in ``kwargs``.
            TypeError: for a keyword this method sets itself (``policy``, ``normalize_rewards``,
                ``bandit``, ``c``), or a bad ``steps`` (as the constructor).
        """
        return cls(steps, policy="paper", normalize_rewards=False, bandit="ucb1", c=2.0, **kwargs)

    @property
    def calibrated(self) -> bool:
        """Whether the calibration run has been made (or a calibrated state loaded)."""
        return self.policy is not None

    @property
    def mu(self) -> Optional[float]:
        """The paper policy's current reward per skip (None before calibration or for other policies)."""
        return self.policy.mu if isinstance(self.policy, PaperBanditPolicy) else self.mu_init

    # -- the step rule ---------------------------------------------------------------

    def start(self, field):
        """The run state: an empty history, and an error-table recorder if this is the
        calibration run."""
        size = self.order + 1
        if not self.calibrated:
            times = [field.t(k) for k in range(field.steps)]
            return _Run(history=History(size), recorder=TableRecorder(times, self.order, self.max_run,
                                                                       weights=self.weights, base=self.base))
        return _Run(history=History(size), recorder=None)

    def velocity(self, field: VelocityField, run: _Run, k: int, x: torch.Tensor) -> torch.Tensor:
        """The velocity of step k: inside a run of skips, the order-p extrapolation at t_k (no
        model call); else the model at (x_k, t_k), after which the policy picks the next run
        (steps p..T-2 after calibration) and, on the real step ending a run, the error of that
        run's extrapolation is kept on the device for ``finish``.

        Raises:
            ValueError: for a model output that is not a tensor of the shape of x (``VelocityField``).
        """
        if run.remaining > 0:
            run.remaining -= 1
            field.mark_skipped(k)
            return run.history.extrapolate(field.t(k), self.order)
        v = field.at(k, x)
        t = field.t(k)
        if run.pending is not None:  # the real step ending a run: what its nodes predicted here
            decided, gaps, m = run.pending
            e = relative_error(run.history.extrapolate(t, self.order), v)
            run.observed.append((decided, gaps, m + 1, e if self.uniform else e * self.weights[k]))
            run.pending = None
        run.history.append(t, v)
        run.reals.append(k)
        if run.recorder is not None:
            run.recorder.add(k, v)
        elif self.order <= k < field.steps - 1:
            m = self.policy.run_length(k, field.steps - 2 - k)
            if self.policy.observes:
                r = run.reals
                run.pending = (k, tuple(r[-1 - i] - r[-2 - i] for i in range(self.order)), m)
            run.remaining = m
            if m:
                run.decisions.append((k, m))
        return v

    def finish(self, field, run):
        """After the calibration run, build the table and the policy (``_calibrate``); after a
        later run, read its observations (one host read) and update a learning policy, or queue
        the update inside ``deferred_updates``. Returns the info keys of the class docstring.

        Raises:
            ValueError: when the calibration run's table has NaN entries (nothing is set then).
        """
        calibrating = run.recorder is not None
        reads = 0
        if calibrating:
            self._calibrate(run.recorder.table(), run.recorder.euler_errors())
            reads = 2  # the table and Euler's error estimates
        update = None
        if not calibrating and self.policy.observes:
            obs = []
            if run.observed:
                errors = torch.stack([e for *_, e in run.observed]).tolist()  # the run's one host read
                reads = 1
                obs = [[k, list(g), lead, float(e)] for (k, g, lead, _), e in zip(run.observed, errors)]
            update = {"observations": obs, "nfe": field.nfe}
            if self._deferred is not None:
                self._deferred.append(update)
            else:
                self.apply_updates([update])
        info = {"policy": self.policy_name, "calibration_run": calibrating, "calls_target": self.calls_target,
                "decisions": run.decisions, "host_reads": reads, "update": update}
        if isinstance(self.policy, PaperBanditPolicy):
            info["mu"] = self.policy.mu
        return info

    # -- learning in rounds (several batches, or several processes, from one state) ----

    @contextlib.contextmanager
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
        self._need_calibration("deferred updates")
        if self._deferred is not None:
            raise ValueError("deferred_updates() blocks do not nest")
        self._deferred = []
        try:
            yield self._deferred
        finally:
            self._deferred = None

    def apply_updates(self, updates: Sequence[Optional[dict]]) -> None:
        """Learn from finished runs, in the given order, as if each had just ended here (``None``
        entries are skipped). Applying every rank's updates in rank order on every rank keeps
        all ranks' states equal, and equal to one process that ran the same batches in rounds
        (``fastflow.distributed``).

        Each update is ``{"observations": [[k, gaps, lead, error], ...], "nfe": calls}``.

        Raises:
            ValueError: before calibration, or for a malformed update: missing keys, values that
                are not numbers, a step outside [0, T - 1], gaps not p in number, a negative
                or non-finite error, or an nfe outside [0, 2T] (nothing is applied then).
            KeyError, IndexError, ValueError: from the policy's ``update`` for an update that
                passes those checks but names a step, gap or lead the policy has no entry for
                (``PaperBanditPolicy.update``, ``PlanningBanditPolicy.update``); the updates
                before it have been applied then.
        """
        self._need_calibration("apply_updates")
        parsed = []
        for u in updates:
            if u is None:
                continue
            try:
                obs = [Observation(int(k), tuple(int(g) for g in gaps), int(lead), float(e))
                       for k, gaps, lead, e in u["observations"]]
                nfe = int(u["nfe"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"malformed FastFlow update ({type(e).__name__}: {e})") from None
            if any(o.k not in range(self.steps) or len(o.gaps) != self.order or not math.isfinite(o.error)
                   or o.error < 0 for o in obs) or not 0 <= nfe <= 2 * self.steps:
                raise ValueError(f"malformed FastFlow update: observations {u['observations']!r}, nfe {nfe}")
            parsed.append((obs, nfe))
        before = self.state_dict()  # an update can still be refused by the policy (a step or lead it lacks)
        try:
            for obs, nfe in parsed:
                self.policy.update(obs, nfe)
        except (KeyError, IndexError, ValueError) as e:
            self.load_state_dict(before)  # all or nothing
            raise ValueError(f"malformed FastFlow update: the policy refused it ({type(e).__name__}: {e})") from None

    # -- calibration -----------------------------------------------------------------

    def _calibrate(self, table: torch.Tensor, euler_errors: torch.Tensor) -> None:
        """Choose the call budget and build the policy from a full run (nothing is set on failure)."""
        T, p, R = self.steps, self.order, self.max_run
        if torch.isnan(table).any():
            raise ValueError("calibration run gave NaN extrapolation errors (non-finite velocities?)")
        costs = planned_costs(table, T, p, R)
        budget = float(euler_errors.sum())
        if self.calls is not None:
            K = self.calls
        elif self.tolerance is not None:
            ok = [c for c in range(T + 1) if math.isfinite(costs[c]) and costs[c] <= self.tolerance * budget]
            K = min(ok) if ok else T
        else:
            K = None
        if self.policy_name == "plan":
            policy = PlanPolicy(T, plan_skips(table, T, K, p, R))
        elif self.policy_name == "bandit":
            policy = PlanningBanditPolicy(table, T, K, p, R, c=self.explore)
        else:
            ones = (1,) * p
            one_step = [float(table[(k, *ones, 1)]) for k in range(p, T - 1)]
            if self.mu_init is not None:
                mu = self.mu_init
            elif K is not None:  # Lagrange start: the plan's mean error per skip
                mu = float(costs[K]) / max(T - K, 1)
            else:
                mu = max(one_step, default=0.0) / T
            policy = PaperBanditPolicy(T, self.arms, p, self.bandit_kind, mu, self.normalize_rewards,
                                       self.generator, calls=K, **self.bandit_kwargs)
            policy.seed(table)
        self.table, self.euler_errors, self.calls_target, self.policy = table, euler_errors, K, policy

    def _need_calibration(self, what: str) -> None:
        if not self.calibrated:
            raise ValueError(f"{what} needs a calibration run: call sample() once first (a full Euler run)")

    # -- inspection ------------------------------------------------------------------

    def schedule(self) -> list[int]:
        """The skip set the policy would play now without exploring.

        Raises:
            ValueError: before calibration (or, for the bandit policy, if no plan with K calls
                has a finite error on the running estimate).
        """
        self._need_calibration("a schedule")
        return self.policy.schedule()

    def freeze(self) -> ExtrapolatedEulerSampler:
        """What was learned, as a fixed schedule: no decisions at run time, reproducible,
        savable (``ExtrapolatedEulerSampler.save``).

        Raises:
            ValueError: before calibration (see ``schedule``).
        """
        return ExtrapolatedEulerSampler(self.steps, self.schedule(), self.order, times=self.times, base=self.base)

    def planned_error(self, skip: Optional[Iterable[int]] = None) -> float:
        """Summed table error of a skip set (default: the current schedule), relative to the
        calibration run's estimate of Euler-T's own error sum_k eta_k:
        ``plan_cost(table, T, skip, p) / sum_k eta_k``.

        Raises:
            ValueError: before calibration, or for a skip set ``plan_cost`` refuses (a step with
                too few real steps before it, or a run longer than the table covers).
            ZeroDivisionError: when sum_k eta_k is 0 (a velocity constant along the run).
        """
        self._need_calibration("a planned error")
        skip = self.schedule() if skip is None else skip
        cost, budget = plan_cost(self.table, self.steps, skip, self.order), float(self.euler_errors.sum())
        if budget == 0:  # Euler is exact on this flow (a velocity constant along the paths)
            return 0.0 if cost == 0 else math.inf
        return cost / budget

    def _paper(self) -> PaperBanditPolicy:
        if not isinstance(self.policy, PaperBanditPolicy):
            raise ValueError(f"per-step bandits exist only with policy='paper' (this sampler: "
                             f"'{self.policy_name}'{'' if self.calibrated else ', not calibrated yet'})")
        return self.policy

    @property
    def bandits(self):
        """The paper policy's per-step bandits, {step k: bandit}; ValueError for other policies
        or before calibration."""
        return self._paper().bandits

    def arm_counts(self) -> dict[int, list[int]]:
        """Pull counts per decision step, in the order of ``arms`` (paper policy; {} before
        calibration).

        Raises:
            ValueError: for a policy other than ``"paper"``.
        """
        if not self.calibrated and self.policy_name == "paper":
            return {}
        return {k: list(b.counts) for k, b in self._paper().bandits.items()}

    def greedy_schedule(self) -> list[int]:
        """Steps skipped if every bandit pulled its best-mean arm (paper policy; [] before calibration).

        Raises:
            ValueError: for a policy other than ``"paper"``.
        """
        if not self.calibrated and self.policy_name == "paper":
            return []
        return self._paper().schedule()

    # -- persistence -----------------------------------------------------------------

    def _config(self) -> dict:
        return {"steps": self.steps, "times": None if self.uniform else self.times.tolist(), "base": self.base,
                "order": self.order, "arms": list(self.arms), "max_run": self.max_run,
                "policy": self.policy_name,
                "calls": self.calls, "tolerance": self.tolerance, "bandit": self.bandit_kind,
                "normalize_rewards": self.normalize_rewards}

    def state_dict(self) -> dict:
        """The state as plain JSON-able data: ``format``, ``version``, the settings (``steps``,
        ``times``, ``base``, ``order``, ``arms``, ``max_run``, ``policy``, ``calls``, ``tolerance``,
        ``bandit``, ``normalize_rewards``) and ``calibrated``; once calibrated also the table
        (``table_shape``, ``table`` flattened with null for +inf), ``euler_errors``,
        ``calls_target`` and the policy's statistics (``plan``; ``planner``; or ``mu``,
        ``reward_scale`` and ``bandits``)."""
        state = {"format": STATE_FORMAT, "version": STATE_VERSION, **self._config(), "calibrated": self.calibrated}
        if not self.calibrated:
            return state
        flat = self.table.reshape(-1).tolist()
        state.update({"table_shape": list(self.table.shape),
                      "table": [e if math.isfinite(e) else None for e in flat],
                      "euler_errors": self.euler_errors.tolist(), "calls_target": self.calls_target})
        pol = self.policy
        if isinstance(pol, PlanPolicy):
            state["plan"] = list(pol.skip)
        elif isinstance(pol, PlanningBanditPolicy):
            state["planner"] = pol.ucb.state_dict()
            state["plan"] = list(pol.skip)
        else:
            state.update({"mu": pol.mu, "reward_scale": pol.reward_scale,
                          "bandits": {str(k): b.state_dict() for k, b in pol.bandits.items()}})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a state; nothing changes unless all of it is valid.

        Raises:
            ValueError: naming the field, for another format or version, a state learned by a
                differently configured sampler (steps, order, arms, policy, budget, bandit), or
                any malformed value (a malformed ``planner`` or ``bandits`` entry included).
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a FastFlow state (missing 'format': '{STATE_FORMAT}')")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"FastFlow state version {state.get('version')!r} is not supported "
                             f"(expected {STATE_VERSION}); calibrate again")
        mine = self._config()
        theirs = {key: state.get(key, "euler" if key == "base" else None) for key in mine}  # v2 files lack base
        if theirs != mine:
            diff = ", ".join(f"{k}={theirs[k]!r} (sampler has {mine[k]!r})" for k in mine if theirs[k] != mine[k])
            raise ValueError(f"state does not match this sampler: {diff}")
        if state.get("calibrated") is False:
            self.policy = self.table = self.euler_errors = self.calls_target = None
            return
        if state.get("calibrated") is not True:
            raise ValueError(f"'calibrated' must be true or false, got {state.get('calibrated')!r}")
        shape = table_shape(self.steps, self.order, self.max_run)
        if state.get("table_shape") != list(shape):
            raise ValueError(f"'table_shape' is {state.get('table_shape')!r}, expected {list(shape)}")
        values = state.get("table")
        if not isinstance(values, list) or len(values) != math.prod(shape) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0)
                for v in values):
            raise ValueError("'table' must list prod(table_shape) finite errors >= 0 (null for undefined)")
        table = torch.tensor([math.inf if v is None else float(v) for v in values], dtype=torch.float64).reshape(shape)
        eta = state.get("euler_errors")
        if not isinstance(eta, list) or len(eta) != self.steps - 1 or not all(
                isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in eta):
            raise ValueError(f"'euler_errors' must list {self.steps - 1} finite numbers >= 0")
        K = state.get("calls_target")
        if K is not None:
            _check_int("'calls_target'", K, min_calls(self.steps, self.order, self.max_run), self.steps)
        if self.policy_name != "paper" and K is None:
            raise ValueError("'calls_target' is missing")
        p, R, T = self.order, self.max_run, self.steps
        if self.policy_name == "plan":
            policy = PlanPolicy(T, self._valid_plan(state.get("plan"), K))
        elif self.policy_name == "bandit":
            policy = PlanningBanditPolicy(table, T, K, p, R, c=self.explore)
            if not isinstance(state.get("planner"), dict):
                raise ValueError("'planner' statistics are missing")
            try:
                policy.ucb.load_state_dict(state["planner"])
            except (KeyError, TypeError) as e:
                raise ValueError(f"'planner' is malformed ({type(e).__name__}: {e})") from None
            policy.play(self._valid_plan(state.get("plan"), K))
        else:
            mu, scale = state.get("mu"), state.get("reward_scale")
            for name, value in (("mu", mu), ("reward_scale", scale)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or value < 0 or (name == "reward_scale" and value == 0):
                    raise ValueError(f"'{name}' must be a finite number > 0 (mu >= 0), got {value!r}")
            if self.mu_init is not None and mu != self.mu_init and K is None:
                raise ValueError(f"state was learned with mu={mu}, sampler has mu={self.mu_init}")
            policy = PaperBanditPolicy(T, self.arms, p, self.bandit_kind, mu, self.normalize_rewards,
                                       self.generator, calls=K, **self.bandit_kwargs)
            policy.reward_scale = float(scale)
            bandits = state.get("bandits")
            if not isinstance(bandits, dict) or set(bandits) != {str(k) for k in policy.bandits}:
                raise ValueError("'bandits' has entries for other steps than this sampler")
            for k, b in policy.bandits.items():
                entry = bandits[str(k)]
                if not isinstance(entry, dict):
                    raise ValueError(f"'bandits' entry {k} is not an object")
                try:
                    b.load_state_dict(entry)
                except (KeyError, TypeError) as e:
                    raise ValueError(f"'bandits' entry {k} is malformed ({type(e).__name__}: {e})") from None
        self.table, self.euler_errors = table, torch.tensor(eta, dtype=torch.float64)
        self.calls_target, self.policy = K, policy

    def _valid_plan(self, plan, K: int) -> list[int]:
        if not isinstance(plan, list) or not all(isinstance(j, int) and not isinstance(j, bool) for j in plan):
            raise ValueError("'plan' must be a list of step indices")
        if len(plan) != self.steps - K:
            raise ValueError(f"'plan' skips {len(plan)} steps, but calls_target={K} means {self.steps - K}")
        ExtrapolatedEulerSampler(self.steps, plan, self.order, times=self.times)  # validates the steps
        if max(runs_after(self.steps, plan).values(), default=0) > self.max_run or (plan and plan[-1] == self.steps - 1):
            raise ValueError(f"'plan' has a run longer than max_run={self.max_run} or skips the last step")
        return sorted(plan)

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
        if tag is not None and not isinstance(tag, str):
            raise ValueError(f"tag must be a string or None, got {type(tag).__name__}")
        state = {**self.state_dict(), "tag": tag}
        atomic_write(path, lambda f: json.dump(state, f, allow_nan=False), binary=False)

    def load_state(self, path: str | os.PathLike, tag: Optional[str] = None) -> None:
        """Load a state written by ``save_state``, refusing one learned with other settings or
        under another ``tag`` (both None counts as a match).

        Raises:
            ValueError: naming the file, for a corrupt, non-UTF-8 or mismatched file, or a tag
                that differs from the one it was saved with (all of ``load_state_dict``'s errors,
                and a KeyError or TypeError from a malformed state, become this).
            OSError: when the file cannot be read (e.g. FileNotFoundError).
        """
        try:
            with open(path, "rb") as f:
                state = json.loads(f.read().decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"{path}: corrupt FastFlow state file (not UTF-8 text)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: corrupt FastFlow state file ({e})") from None
        if isinstance(state, dict) and state.get("tag") != tag:
            raise ValueError(f"{path}: state was saved with tag {state.get('tag')!r}, this sampler is loading it "
                             f"with tag {tag!r} (a state belongs to one model and setting)")
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: malformed FastFlow state ({type(e).__name__}: {e})") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        knob = f"calls={self.calls}" if self.calls is not None else (
            f"tolerance={self.tolerance}" if self.tolerance is not None else f"mu={self.mu_init}")
        base = "" if self.base == "euler" else f", base='{self.base}'"
        return f"FastFlowSampler({self.grid_repr()}, policy='{self.policy_name}', {knob}, order={self.order}{base})"
