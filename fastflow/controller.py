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
import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .atomic import atomic_write
from .bandit import BANDITS, make_bandit
from .errors import TableRecorder, relative_error, table_shape
from .extrapolate import History, check_order
from .plan import min_calls, plan_cost, plan_skips, planned_costs
from .policy import Observation, PaperBanditPolicy, PlanningBanditPolicy, PlanPolicy, SkipPolicy

__all__ = ["SkipController", "SkipRun", "POLICIES", "DEFAULT_TOLERANCE", "DEFAULT_MAX_RUN", "STATE_FORMAT",
           "STATE_VERSION"]

STATE_FORMAT = "fastflow-bandit-state"
STATE_VERSION = 2
POLICIES = ("plan", "bandit", "paper")
DEFAULT_TOLERANCE = 1.0
DEFAULT_MAX_RUN = 6


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
    return value


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

    Settings (checked here, once, for every loop): the step count T (None until a loop's first
    run has shown it, as for ``SkipWrapper``), extrapolation order p, ``calls`` or ``tolerance``,
    ``policy`` and its settings, ``max_run``, and the per-step error weights (T |dt_j| / |span|
    on an uneven grid, None on a uniform one).

    The calibration run builds the policy: ``calls=K`` as given, or the fewest K whose optimal
    plan's summed error is at most ``tolerance`` times the base solver's own estimated error.

    Raises:
        ValueError: for bad arms (empty, not non-negative ints, repeated, or none >= 1), a
            negative or non-finite mu, an order that is not an int >= 1, an unknown policy or
            bandit, a bandit, its hyperparameters or mu given to a policy other than ``"paper"``,
            both ``calls`` and ``tolerance``, a ``calls`` outside [p + 2, T] or below
            ``min_calls``, a tolerance that is not a finite number > 0, a ``max_run`` that is not
            an int in [1, T] (or, for the paper policy, differs from max(arms)), an explore < 0,
            or a bad hyperparameter value (``make_bandit``).
        TypeError: for a hyperparameter the paper policy's bandit does not take.
    """

    def __init__(self, steps: int, calls: Optional[int] = None, tolerance: Optional[float] = None,
                 policy: Optional[str] = None, arms: Sequence[int] = (0, 1, 2, 3, 4), mu: Optional[float] = None,
                 order: int = 1, bandit: Optional[str] = None, normalize_rewards: bool = True,
                 generator: Optional[torch.Generator] = None, explore: float = 0.5,
                 max_run: Optional[int] = None, weights: Optional[Sequence[float]] = None, base: str = "euler",
                 **bandit_kwargs):
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
        if policy not in POLICIES:
            raise ValueError(f"unknown policy '{policy}', choose from {list(POLICIES)}")
        if policy != "paper" and (bandit is not None or bandit_kwargs):
            raise ValueError(f"bandit and its hyperparameters belong to the paper policy, not '{policy}'")
        if mu is not None and policy != "paper":
            raise ValueError(f"mu is the paper bandit's reward per skip; policy '{policy}' takes calls or tolerance")
        if calls is not None and tolerance is not None:
            raise ValueError("give calls or tolerance, not both")
        self.steps, self.order = steps, check_order(order)
        if policy == "paper":
            if max_run is not None and max_run != max(arms):
                raise ValueError(f"the paper policy's runs are its arms: max_run={max_run} != max(arms)={max(arms)}")
            self.max_run = max(arms)
        else:
            self.max_run = DEFAULT_MAX_RUN if max_run is None else _check_int("max_run", max_run, 1, steps)
        if steps < self.order + 3:
            raise ValueError(f"order-{self.order} skipping needs at least {self.order + 3} steps "
                             f"(steps 0..{self.order} and the last are always real), got {steps}")
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
        if not explore >= 0:
            raise ValueError(f"explore must be >= 0, got {explore}")
        if policy == "paper":
            make_bandit(bandit or "ucb1", len(arms), **bandit_kwargs)  # validate the hyperparameters now
        self.calls, self.tolerance, self.policy_name, self.arms, self.mu_init = calls, tolerance, policy, arms, mu
        self.bandit_kind, self.normalize_rewards, self.generator = bandit or "ucb1", normalize_rewards, generator
        self.explore, self.bandit_kwargs, self.base = explore, dict(bandit_kwargs), base
        self.weights = _weights(weights)
        self.policy: Optional[SkipPolicy] = None
        self.table: Optional[torch.Tensor] = None
        self.euler_errors: Optional[torch.Tensor] = None
        self.calls_target: Optional[int] = None
        self._deferred: Optional[list] = None

    @property
    def calibrated(self) -> bool:
        """Whether a calibration run has been made (or a calibrated state loaded)."""
        return self.policy is not None

    @property
    def mu(self) -> Optional[float]:
        """The paper policy's current reward per skip (its given mu before calibration; None for
        other policies)."""
        return getattr(self.policy, "mu", self.mu_init)

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
            and ``mu`` for the paper policy.

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
        info = {"policy": self.policy_name, "calibration_run": run.calibrating, "calls_target": self.calls_target,
                "decisions": run.decisions, "host_reads": reads, "update": update}
        if self.policy_name == "paper":
            info["mu"] = self.mu
        return info

    # -- calibration -----------------------------------------------------------------

    def calibrate_from(self, table: torch.Tensor, euler_errors: torch.Tensor) -> None:
        """Choose the call budget and build the policy from a full run's error table and the base
        solver's local error estimates (nothing is set on failure).

        Raises:
            ValueError: for a table with NaN entries or of another shape than the settings give.
        """
        T, p, R = self.steps, self.order, self.max_run
        if torch.isnan(table).any():
            raise ValueError("calibration run gave NaN extrapolation errors (non-finite velocities?)")
        if tuple(table.shape) != table_shape(T, p, R):
            raise ValueError(f"calibration table has shape {tuple(table.shape)}, expected {table_shape(T, p, R)}")
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
            policy = PlanPolicy(T, plan_skips(table, T, K, p, R), p)
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
            policy = self._paper_policy(mu, K)
            policy.seed(table)
        self.table, self.euler_errors, self.calls_target, self.policy = table, euler_errors, K, policy

    def _paper_policy(self, mu: float, K: Optional[int]) -> PaperBanditPolicy:
        return PaperBanditPolicy(self.steps, self.arms, self.order, self.bandit_kind, mu, self.normalize_rewards,
                                 self.generator, calls=K, **self.bandit_kwargs)

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
            except (KeyError, TypeError, ValueError) as e:
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
        cost, budget = plan_cost(self.table, self.steps, skip, self.order), float(self.euler_errors.sum())
        if budget == 0:  # the base solver is exact on this flow (a velocity constant along the paths)
            return 0.0 if cost == 0 else math.inf
        return cost / budget

    # -- persistence -----------------------------------------------------------------

    def config(self) -> dict:
        """The settings a state must have been learned with (without the grid, which the loop owns)."""
        return {"order": self.order, "arms": list(self.arms), "max_run": self.max_run, "policy": self.policy_name,
                "calls": self.calls, "tolerance": self.tolerance, "bandit": self.bandit_kind,
                "normalize_rewards": self.normalize_rewards}

    def state_dict(self, grid: dict) -> dict:
        """The state as plain JSON-able data: ``format``, ``version``, the loop's ``grid`` entries,
        the settings, ``calibrated``, and once calibrated the table (``table_shape``, ``table``
        flattened with null for +inf), ``euler_errors``, ``calls_target`` and the policy's own
        state (``plan``; ``planner`` and ``plan``; or ``mu``, ``reward_scale`` and ``bandits``)."""
        state = {"format": STATE_FORMAT, "version": STATE_VERSION, **grid, **self.config(),
                 "calibrated": self.calibrated}
        if not self.calibrated:
            return state
        flat = self.table.reshape(-1).tolist()
        state.update({"table_shape": list(self.table.shape),
                      "table": [e if math.isfinite(e) else None for e in flat],
                      "euler_errors": self.euler_errors.tolist(), "calls_target": self.calls_target})
        state.update(self.policy.state_dict())
        return state

    def load_state_dict(self, state: dict, grid: dict) -> None:
        """Restore a state; nothing changes unless all of it is valid.

        Raises:
            ValueError: naming the field, for another format or version, a state learned with
                other settings or on another grid, or any malformed value.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a FastFlow state (missing 'format': '{STATE_FORMAT}')")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"FastFlow state version {state.get('version')!r} is not supported "
                             f"(expected {STATE_VERSION}); calibrate again")
        mine = {**grid, **self.config()}
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
            policy = PlanPolicy(T, [], p)
        elif self.policy_name == "bandit":
            policy = PlanningBanditPolicy(table, T, K, p, R, c=self.explore)
        else:
            mu = state.get("mu")
            if self.mu_init is not None and mu != self.mu_init and K is None:
                raise ValueError(f"state was learned with mu={mu}, sampler has mu={self.mu_init}")
            policy = self._paper_policy(self.mu_init or 0.0, K)
        policy.load_state_dict(state, K, R)
        self.table, self.euler_errors = table, torch.tensor(eta, dtype=torch.float64)
        self.calls_target, self.policy = K, policy

    def save_state(self, path: str | os.PathLike, grid: dict, tag: Optional[str] = None) -> None:
        """Write ``state_dict(grid)`` and ``tag`` as JSON, atomically.

        Raises:
            ValueError: for a tag that is not a string or None.
            OSError: naming ``path`` when it cannot be written.
        """
        if tag is not None and not isinstance(tag, str):
            raise ValueError(f"tag must be a string or None, got {type(tag).__name__}")
        state = {**self.state_dict(grid), "tag": tag}
        atomic_write(path, lambda f: json.dump(state, f, allow_nan=False), binary=False)

    def load_state(self, path: str | os.PathLike, grid: dict, tag: Optional[str] = None) -> None:
        """Load a state written by ``save_state``, refusing one learned with other settings or
        under another ``tag`` (both None counts as a match).

        Raises:
            ValueError: naming the file, for a corrupt, non-UTF-8 or mismatched file, or another tag.
            OSError: when the file cannot be read (e.g. FileNotFoundError).
        """
        load_state_file(path, tag, lambda state: self.load_state_dict(state, grid))


def load_state_file(path: str | os.PathLike, tag: Optional[str], load, who: str = "sampler") -> None:
    """Read a JSON state written by ``save_state``, refuse another ``tag``, and hand it to
    ``load`` (a ``load_state_dict``); every error names the file.

    Raises:
        ValueError: naming the file, for a corrupt or non-UTF-8 file, another tag, or what ``load``
            refuses (its KeyError and TypeError on a malformed state included).
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
        raise ValueError(f"{path}: state was saved with tag {state.get('tag')!r}, this {who} is loading it "
                         f"with tag {tag!r} (a state belongs to one model and setting)")
    try:
        load(state)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed FastFlow state ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
