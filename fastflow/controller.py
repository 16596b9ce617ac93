"""The skip engine: one controller for every loop that skips model calls (``FastFlowSampler``,
``SkipWrapper``, and any loop of your own).

A loop asks its run (``SkipController.begin``) one question per step and reports what it got:

    if run.skipping():            v_k = run.extrapolate(k, t_k)      # no model call
    else:                         v_k = model(x_k, t_k); run.real(k, t_k, v_k)

and ends the run with ``controller.end(run, nfe)``. The run owns everything in between: the
history of the last p + 1 real velocities, the policy's run-length decision after each real
step, the error of each run of skips measured at the real step that ends it, and, on the
calibration run, the streaming error table (``fastflow.errors.TableRecorder``). At the end the
controller builds the policy (calibration) or hands the run's observations to it, or queues
them inside ``deferred_updates`` for ``apply_updates`` (several batches or processes learning
from one state). An update the policy refuses is rolled back whole, by restoring the policy's
own small snapshot.

Time: steps are indexed k = 0..T-1 and carry their time t_k, in whatever units the loop uses
(our t with t = 0 noise and t = 1 data, sigma, 1000 sigma), increasing or decreasing:
extrapolation is unchanged by an affine change of time.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from . import checks
from .errors import TableRecorder, relative_error
from .extrapolate import History
from .persist import STATE_FORMAT, STATE_VERSION, Calibration, calls_target, check_header, load_state_file, save_json
from .plan import min_calls, plan_cost
from .policy import Observation, SkipPolicy
from .specs import DEFAULT_MAX_RUN, POLICIES, PolicySpec, policy_spec

__all__ = ["SkipController", "SkipRun", "POLICIES", "DEFAULT_TOLERANCE", "DEFAULT_MAX_RUN", "STATE_FORMAT",
           "STATE_VERSION"]

DEFAULT_TOLERANCE = 1.0


def _weights(weights: Optional[Sequence[float]]) -> Optional[list]:
    """Per-step error weights as floats, or None when they are all 1 (to 1e-12: an evenly spaced grid)."""
    if weights is None or all(abs(w - 1.0) <= 1e-12 for w in weights):
        return None
    return [float(w) for w in weights]


@dataclass
class SkipRun:
    """What one run has seen: its history, its current run of skips, its observations.

    Built by ``SkipController.begin`` (or ``SkipRun.calibration`` for a loop whose length is not
    known yet); ``recorder`` is set on the calibration run only, ``policy`` on the others.

    Raises:
        Nothing of its own (a dataclass); ``real`` raises for steps past the calibrated ones.
    """

    order: int
    history: History
    recorder: Optional[TableRecorder] = None
    policy: Optional[SkipPolicy] = None
    steps: Optional[int] = None                 # T of the calibration (None on the calibration run)
    weights: Optional[list] = None              # per-step error weights (None: all 1)
    reals: list = field(default_factory=list)
    remaining: int = 0                          # skips left in the current run of skips
    pending: Optional[tuple] = None             # (k, gaps, m): decision awaiting its run-end error
    observed: list = field(default_factory=list)   # (k, gaps, lead, 0-d error tensor)
    decisions: list = field(default_factory=list)  # (k, m): m steps extrapolated after real step k
    skipped: list = field(default_factory=list)
    prev: Optional[torch.Tensor] = None         # the last velocity used (for an AB2 base)

    @classmethod
    def calibration(cls, order: int, max_run: int, times: Optional[Sequence[float]] = None,
                    base: str = "euler") -> "SkipRun":
        """A calibration run: every step real, the error table recorded (``TableRecorder``)."""
        return cls(order, History(order + 1), TableRecorder(times, order, max_run, base=base))

    @property
    def calibrating(self) -> bool:
        """Whether this is the calibration run (every step real, the table recorded)."""
        return self.recorder is not None

    def skipping(self) -> bool:
        """Whether the next step is extrapolated (a decision already taken, no host read)."""
        return self.remaining > 0

    def extrapolate(self, k: int, t: float) -> torch.Tensor:
        """The order-p extrapolation of the last p + 1 real velocities at time t, for skipped step k."""
        self.remaining -= 1
        self.skipped.append(k)
        return self.history.extrapolate(t, self.order)

    def real(self, k: int, t: float, v: torch.Tensor) -> None:
        """Record the model's velocity v (batch, ...) at step k, time t: measure the run of skips it
        ends, record it in the table (calibration), and let the policy choose the next run.

        Raises:
            ValueError: for a step beyond the calibrated steps, or out of order on calibration.
        """
        if self.pending is not None:  # the real step ending a run: what its nodes predicted here
            decided, gaps, m = self.pending
            e = relative_error(self.history.extrapolate(t, self.order), v)
            self.observed.append((decided, gaps, m + 1, e if self.weights is None else e * self.weights[k]))
            self.pending = None
        self.history.append(t, v)
        self.reals.append(k)
        if self.recorder is not None:
            self.recorder.add(k, v, t=t)
            return
        T, p = self.steps, self.order
        if k >= T:
            raise ValueError(f"this run has more than the {T} steps of the calibration run; "
                             f"calibrate again when the loop changes")
        if p <= k < T - 1:
            m = self.policy.run_length(k, T - 2 - k)
            if self.policy.observes:
                r = self.reals
                self.pending = (k, tuple(r[-1 - i] - r[-2 - i] for i in range(p)), m)
            self.remaining = m
            if m:
                self.decisions.append((k, m))


class SkipController:
    """FastFlow's policy, its calibration, its learning and its persistence, for any loop.

    Settings (checked here, once, for every loop): the step count T, extrapolation order p,
    ``calls`` or ``tolerance``, the ``policy`` (a spec of ``fastflow.specs``, or its shorthand
    string with flat keywords, ``policy_spec``), ``max_run``, and the per-step error weights
    (T |dt_j| / |span| on an uneven grid, None on a uniform one).

    The calibration run builds the policy (``PolicySpec.build``) from one ``Calibration``
    record: ``calls=K`` as given, or the fewest K whose optimal plan's summed error is at most
    ``tolerance`` times the base solver's own estimated error.

    Raises:
        ValueError: for a bad policy spec or a setting that belongs to another policy
            (``policy_spec``), an order that is not an int in [1, 16], a T below p + 3, both
            ``calls`` and ``tolerance``, a ``calls`` outside [p + 2, T] or below ``min_calls``, a
            tolerance that is not a finite number > 0, or a ``max_run`` that is not an int in
            [1, T] (or, for the paper policy, differs from max(arms)).
        TypeError: for a keyword no policy takes, or a hyperparameter the paper bandit does not take.
    """

    def __init__(self, steps: int, calls: Optional[int] = None, tolerance: Optional[float] = None,
                 policy: "PolicySpec | str | None" = None, order: int = 1, max_run: Optional[int] = None,
                 weights: Optional[Sequence[float]] = None, base: str = "euler", **settings):
        self.spec = policy_spec(policy, **settings)
        self.order = checks.order(order)
        if calls is not None and tolerance is not None:
            raise ValueError("give calls or tolerance, not both")
        self.steps = steps
        if steps < self.order + 3:
            raise ValueError(f"order-{self.order} skipping needs at least {self.order + 3} steps "
                             f"(steps 0..{self.order} and the last are always real), got {steps}")
        self.max_run = self.spec.run_limit(max_run, steps)
        if calls is not None:
            checks.int_in("calls", calls, self.order + 2, steps)
            lo = min_calls(steps, self.order, self.max_run)
            if calls < lo:
                raise ValueError(f"calls={calls} is too few for steps={steps} with runs of at most "
                                 f"{self.max_run} skips: at least {lo} are needed")
        if tolerance is not None:
            if checks.finite("tolerance", tolerance, what="a finite number > 0") <= 0:
                raise ValueError(f"tolerance must be a finite number > 0, got {tolerance!r}")
        if self.spec.default_tolerance and calls is None and tolerance is None:
            tolerance = DEFAULT_TOLERANCE  # the paper bandit without a budget keeps a fixed or calibrated mu
        self.calls, self.tolerance, self.base = calls, tolerance, base
        self.weights = _weights(weights)
        self.record: Optional[Calibration] = None
        self.policy: Optional[SkipPolicy] = None
        self.calls_target: Optional[int] = None
        self._deferred: Optional[list] = None

    @property
    def policy_name(self) -> str:
        """The policy's shorthand: ``"plan"``, ``"bandit"`` or ``"paper"``."""
        return self.spec.name

    @property
    def calibrated(self) -> bool:
        """Whether a calibration run has been made (or a calibrated state loaded)."""
        return self.policy is not None

    @property
    def table(self) -> Optional[torch.Tensor]:
        """The calibration run's error table (None before)."""
        return None if self.record is None else self.record.table

    @property
    def euler_errors(self) -> Optional[torch.Tensor]:
        """The calibration run's estimates of the base solver's local errors (None before)."""
        return None if self.record is None else self.record.euler_errors

    # -- a run -------------------------------------------------------------------------

    def begin(self, times: Optional[Sequence[float]] = None, calibrate: Optional[bool] = None) -> SkipRun:
        """A new run; a calibration run (every step real, the table recorded) if the controller is
        not calibrated yet or ``calibrate`` says so. ``times``: the steps' times t_0..t_{T-1} when
        known in advance (else each ``real`` call gives its own)."""
        calibrate = not self.calibrated if calibrate is None else calibrate
        if calibrate:
            return SkipRun.calibration(self.order, self.max_run, times, self.base)
        return SkipRun(self.order, History(self.order + 1), policy=self.policy, steps=self.steps,
                       weights=self.weights)

    def end(self, run: SkipRun, nfe: int, weights: Optional[Sequence[float]] = None) -> dict:
        """Finish a run that ended without error: after calibration, read the table (one host read)
        and build the policy; after a later run, read its observations (one host read) and update a
        learning policy, or queue the update inside ``deferred_updates``. ``weights``: the per-step
        error weights, for a calibration run whose steps were not known in advance.

        Returns:
            ``policy``, ``calibration_run``, ``calls_target``, ``decisions``, ``host_reads`` (reads
            made here), ``update`` (plain data for ``apply_updates``; None when nothing is learned),
            and the spec's own entries (``mu`` for the paper policy).

        Raises:
            ValueError: when the calibration run's table has NaN entries, or its length does not
                fit the settings (nothing is set then).
        """
        reads, update = 0, None
        if run.calibrating:
            if weights is not None:
                self.weights = _weights(weights)
            table, eta = run.recorder.read(self.weights)
            reads = 1  # the table and the base's error estimates, in one transfer
            self.calibrate_from(table, eta)
        elif self.policy.observes:
            obs = []
            if run.observed:
                errors = torch.stack([e for *_, e in run.observed]).tolist()  # the run's one host read
                reads = 1
                obs = [[k, list(g), lead, float(e)] for (k, g, lead, _), e in zip(run.observed, errors)]
            update = {"observations": obs, "nfe": nfe}
            if self._deferred is not None:
                self._deferred.append(update)
            else:
                self.apply_updates([update])
        return {"policy": self.policy_name, "calibration_run": run.calibrating, "calls_target": self.calls_target,
                "decisions": run.decisions, "host_reads": reads, "update": update, **self.spec.info(self.policy)}

    # -- calibration -----------------------------------------------------------------

    def calibrate_from(self, table: torch.Tensor, euler_errors: torch.Tensor, grid: Optional[dict] = None) -> None:
        """Choose the call budget and build the policy from a full run's error table and the base
        solver's local error estimates (nothing is set on failure).

        Raises:
            ValueError: for a table with NaN entries or of another shape than the settings give.
        """
        record = Calibration(table, euler_errors, self.order, self.max_run, self.weights, dict(grid or {}))
        if record.steps != self.steps:
            raise ValueError(f"calibration table covers {record.steps} steps, the settings {self.steps}")
        K = self.calls if self.calls is not None else (
            record.fewest_calls(self.tolerance) if self.tolerance is not None else None)
        policy = self.spec.build(record, K)
        self.record, self.calls_target, self.policy = record, K, policy

    def need_calibration(self, what: str) -> None:
        """Raise ValueError naming ``what`` unless calibrated.

        Raises:
            ValueError: before calibration.
        """
        if not self.calibrated:
            raise ValueError(f"{what} needs a calibration run: call calibrate() or sample() once first "
                             f"(a full run)")

    # -- learning in rounds --------------------------------------------------------------

    @contextlib.contextmanager
    def deferred_updates(self):
        """Runs inside this block all play the policy's state as it was when the block began;
        what each run learned is queued, in run order, in the yielded list instead of applied.

        Raises:
            ValueError: on entry, if not calibrated, or inside another ``deferred_updates`` block.
        """
        self.need_calibration("deferred updates")
        if self._deferred is not None:
            raise ValueError("deferred_updates() blocks do not nest")
        self._deferred = []
        try:
            yield self._deferred
        finally:
            self._deferred = None

    def apply_updates(self, updates: Sequence[Optional[dict]]) -> None:
        """Learn from finished runs, in the given order (``None`` entries are skipped); all or
        nothing. Each update is ``{"observations": [[k, gaps, lead, error], ...], "nfe": calls}``.

        Raises:
            ValueError: before calibration, for a malformed update (missing keys, values that are
                not numbers, a step outside [0, T - 1], gaps not p in number, a negative or
                non-finite error, an nfe outside [0, 2T]), or one the policy refuses (a step, gap
                or lead it has no entry for); the policy is then left as it was.
        """
        self.need_calibration("apply_updates")
        parsed = []
        for u in updates:
            if u is None:
                continue
            try:
                obs = [Observation(int(k), tuple(int(g) for g in gaps), int(lead), float(e))
                       for k, gaps, lead, e in u["observations"]]
                nfe = int(u["nfe"])
            except (KeyError, TypeError, ValueError, OverflowError) as e:
                raise ValueError(f"malformed FastFlow update ({type(e).__name__}: {e})") from None
            if any(o.k not in range(self.steps) or len(o.gaps) != self.order or not math.isfinite(o.error)
                   or o.error < 0 for o in obs) or not 0 <= nfe <= 2 * self.steps:
                raise ValueError(f"malformed FastFlow update: observations {u['observations']!r}, nfe {nfe}")
            parsed.append((obs, nfe))
        if not parsed:
            return
        snapshot = self.policy.snapshot()  # the policy's own small state, not the table
        try:
            for obs, nfe in parsed:
                self.policy.update(obs, nfe)
        except (KeyError, IndexError, ValueError) as e:
            self.policy.restore(snapshot)  # all or nothing
            raise ValueError(f"malformed FastFlow update: the policy refused it ({type(e).__name__}: {e})") from None

    # -- inspection ------------------------------------------------------------------

    def schedule(self) -> list[int]:
        """The skip set the policy would play now without exploring.

        Raises:
            ValueError: before calibration (or, for the bandit policy, if no plan with K calls
                has a finite error on the running estimate).
        """
        self.need_calibration("a schedule")
        return self.policy.schedule()

    def planned_error(self, skip=None) -> float:
        """Summed table error of a skip set (default: the current schedule), relative to the
        calibration run's estimate of the base solver's own error sum_k eta_k.

        Raises:
            ValueError: before calibration, or for a skip set ``plan_cost`` refuses.
        """
        self.need_calibration("a planned error")
        skip = self.schedule() if skip is None else skip
        cost, budget = plan_cost(self.table, self.steps, skip, self.order), self.record.budget
        if budget == 0:  # the base solver is exact on this flow (a velocity constant along the paths)
            return 0.0 if cost == 0 else math.inf
        return cost / budget

    # -- persistence (fastflow.persist) ------------------------------------------------

    def config(self) -> dict:
        """The settings a state must have been learned with (without the grid, which the loop owns)."""
        return {"order": self.order, "max_run": self.max_run, "policy": self.policy_name, "calls": self.calls,
                "tolerance": self.tolerance, **self.spec.config()}

    def state_dict(self, grid: dict) -> dict:
        """The state as plain JSON-able data: ``format``, ``version``, the loop's ``grid`` entries,
        the settings, ``calibrated``, and once calibrated the record (``Calibration.state_dict``),
        ``calls_target`` and the policy's own state (``plan``; ``planner`` and ``plan``; or ``mu``,
        ``reward_scale`` and ``bandits``)."""
        state = {"format": STATE_FORMAT, "version": STATE_VERSION, **grid, **self.config(),
                 "calibrated": self.calibrated}
        if self.calibrated:
            state.update(self.record.state_dict(), calls_target=self.calls_target, **self.policy.state_dict())
        return state

    def load_state_dict(self, state: dict, grid: dict, who: str = "sampler") -> None:
        """Restore a state; nothing changes unless all of it is valid.

        Raises:
            ValueError: naming the field, for another format or version, a state learned with
                other settings or on another grid, or any malformed value.
        """
        check_header(state, {**grid, **self.config()}, who)
        if state.get("calibrated") is False:
            self.record = self.policy = self.calls_target = None
            return
        if state.get("calibrated") is not True:
            raise ValueError(f"'calibrated' must be true or false, got {state.get('calibrated')!r}")
        record = Calibration.from_state_dict(state, self.steps, self.order, self.max_run, self.weights, grid)
        K = calls_target(state, record, needed=self.spec.default_tolerance)
        policy = self.spec.restore(record, K, state)
        self.record, self.calls_target, self.policy = record, K, policy

    def save_state(self, path: str | os.PathLike, grid: dict, tag: Optional[str] = None) -> None:
        """Write ``state_dict(grid)`` and ``tag`` as JSON, atomically.

        Raises:
            ValueError: for a tag that is not a string or None.
            OSError: naming ``path`` when it cannot be written.
        """
        if tag is not None and not isinstance(tag, str):
            raise ValueError(f"tag must be a string or None, got {type(tag).__name__}")
        save_json(path, {**self.state_dict(grid), "tag": tag})

    def load_state(self, path: str | os.PathLike, grid: dict, tag: Optional[str] = None) -> None:
        """Load a state written by ``save_state``, refusing one learned with other settings or
        under another ``tag`` (both None counts as a match).

        Raises:
            ValueError: naming the file, for a corrupt, non-UTF-8 or mismatched file, or another tag.
            OSError: when the file cannot be read (e.g. FileNotFoundError).
        """
        load_state_file(path, tag, lambda state: self.load_state_dict(state, grid))
