"""Skip policies: after real step k, how many of the following steps to extrapolate.

The sampling loop (``FastFlowSampler``) asks ``run_length(k, limit)`` after each real step
and, at the end of a run, tells the policy what its choices cost: one ``Observation`` per
decision, the relative error (``fastflow.errors.relative_error``) of the extrapolation from
the decision's nodes at the real step that ended its run of skips. The policy never sees the
model or the tensors, and it is updated only after a run has finished, so a run that fails
leaves it untouched and a run needs no host read before its end.

* ``PlanPolicy``: a fixed skip set, e.g. the optimal plan of ``fastflow.plan_skips``.
* ``PlanningBanditPolicy``: re-plans after every run from optimistic running estimates of
  the error table (``fastflow.bandit.ErrorTableUCB``).
* ``PaperBanditPolicy``: the paper's per-step bandits, one per decision step, rewarded by
  r = (mu * m - e) / scale; with a call budget, mu is a Lagrange multiplier adapted online.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from .bandit import Bandit, ErrorTableUCB, make_bandit
from .plan import plan_cost, plan_skips

__all__ = ["Observation", "SkipPolicy", "PlanPolicy", "PlanningBanditPolicy", "PaperBanditPolicy", "runs_after",
           "check_plan"]


@dataclass(frozen=True)
class Observation:
    """At the real step k + lead that ended a run of lead - 1 skips decided after real step k,
    whose older nodes lie ``gaps`` steps back, the extrapolation had relative error ``error``.

    ``error`` is e = ||v_hat - v|| / ||v|| over the batch (``fastflow.errors.relative_error``),
    times the step's weight T dt on an uneven grid; (k, *gaps) indexes the error table's state.

    Raises:
        Nothing of its own (a frozen dataclass; values are checked by ``apply_updates``).
    """

    k: int
    gaps: tuple
    lead: int
    error: float


def runs_after(steps: int, skip: Iterable[int]) -> dict[int, int]:
    """For a skip set, the number of skipped steps that follow each real step k (0 omitted).

    Only steps 0..T-1 are considered; a skip set containing step 0 counts it after real step 0.

    Raises:
        Nothing of its own.
    """
    skip, runs, k = set(skip), {}, 0
    for j in range(steps):
        if j in skip:
            runs[k] = runs.get(k, 0) + 1
        else:
            k = j
    return runs


def check_plan(plan, steps: int, calls: int, order: int, max_run: int) -> list[int]:
    """Validate a saved plan: step indices, T - K of them, each with p + 1 real steps before it,
    runs of at most ``max_run``, the last step real. Returns it sorted.

    Raises:
        ValueError: naming what is wrong.
    """
    if not isinstance(plan, list) or not all(isinstance(j, int) and not isinstance(j, bool) for j in plan):
        raise ValueError("'plan' must be a list of step indices")
    if len(plan) != steps - calls:
        raise ValueError(f"'plan' skips {len(plan)} steps, but calls_target={calls} means {steps - calls}")
    skip = sorted(set(plan))
    if len(skip) != len(plan):
        raise ValueError("'plan' repeats a step")
    for i, k in enumerate(skip):
        if not 0 <= k < steps:
            raise ValueError(f"skip steps must be ints in [0, {steps - 1}], got {k!r}")
        if k - i < order + 1:
            raise ValueError(f"cannot skip step {k}: order-{order} extrapolation needs {order + 1} real "
                             f"evaluations before it, only {k - i} precede it")
    if max(runs_after(steps, skip).values(), default=0) > max_run or (skip and skip[-1] == steps - 1):
        raise ValueError(f"'plan' has a run longer than max_run={max_run} or skips the last step")
    return skip


class SkipPolicy:
    """Interface. ``observes``: whether the sampler must measure run-end errors for it.

    ``name`` is the policy's name in ``FastFlowSampler`` (``"plan"``, ``"bandit"``, ``"paper"``).

    Raises:
        Nothing of its own; ``run_length`` and ``schedule`` raise NotImplementedError here.
    """

    name = "base"
    observes = True

    def run_length(self, k: int, limit: int) -> int:
        """Number of steps to extrapolate right after real step k, at most ``limit``.

        Raises:
            NotImplementedError: always, on the interface.
        """
        raise NotImplementedError

    def update(self, observations: Sequence[Observation], nfe: int) -> None:
        """Learn from a finished run (its observations in run order, and its model calls)."""

    def schedule(self) -> list[int]:
        """The skip set this policy would play now, without exploring (what ``freeze`` keeps).

        Raises:
            NotImplementedError: always, on the interface.
        """
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What the policy has learned, as plain JSON-able entries of a FastFlow state."""
        return {}

    def load_state_dict(self, state: dict, calls: Optional[int], max_run: int) -> None:
        """Restore ``state_dict``'s entries from a FastFlow state (``calls``: its K); nothing
        changes unless all of them are valid."""

    def snapshot(self):
        """A copy of the learned state, cheap (no table), for ``restore`` after a refused update."""
        return None

    def restore(self, snapshot) -> None:
        """Go back to a ``snapshot``."""


class PlanPolicy(SkipPolicy):
    """Play a fixed skip set on every run; learns nothing.

    Args:
        steps: T.
        skip: the skip set (not validated here; ``FastFlowSampler`` passes valid plans).

    Raises:
        Nothing of its own.
    """

    name = "plan"
    observes = False

    def __init__(self, steps: int, skip: Iterable[int], order: int = 1):
        self.steps, self.skip, self.order = steps, sorted(set(skip)), order
        self._runs = runs_after(steps, self.skip)

    def run_length(self, k, limit):
        """The plan's run of skips after real step k, at most ``limit`` (0 if none)."""
        return min(self._runs.get(k, 0), limit)

    def schedule(self):
        """The fixed skip set, sorted."""
        return list(self.skip)

    def state_dict(self):
        """``{"plan": skip}``."""
        return {"plan": list(self.skip)}

    def load_state_dict(self, state, calls, max_run):
        """Play the saved ``plan``.

        Raises:
            ValueError: for a plan that is not valid for T, K, p and ``max_run`` (``check_plan``).
        """
        plan = check_plan(state.get("plan"), self.steps, calls, self.order, max_run)
        self.skip, self._runs = plan, runs_after(self.steps, plan)


class PlanningBanditPolicy(SkipPolicy):
    """Plan for exactly ``calls`` model calls on the optimistic error table, observe, re-plan.

    Every run plays the plan of ``plan_skips`` on ``ErrorTableUCB.estimate()``; its observations
    update the estimate, and the next plan is computed at the end of the run (one dynamic
    program per run: about 20 ms for T = 50 on one CPU core). Many plans cost nearly the same,
    so the policy switches only when the new plan's estimated cost is below (1 - hysteresis)
    times the current one's on the same estimate; otherwise per-batch noise would make it
    wander between equivalent plans. Makes exactly ``calls`` model calls on every run.

    Args:
        table: error table of the calibration run (``fastflow.errors``).
        steps, calls, order, max_run: T, K, p and R, as for ``fastflow.plan_skips``.
        c: exploration constant of ``ErrorTableUCB``.
        hysteresis: relative improvement a new plan needs to replace the current one.

    Raises:
        ValueError: for c < 0, or what ``plan_skips`` refuses on the first plan (a table of the
            wrong shape or with NaN/negative entries, ``calls`` outside [min_calls, T], or no
            plan of finite error).
    """

    name = "bandit"

    def __init__(self, table: torch.Tensor, steps: int, calls: int, order: int, max_run: int, c: float = 2.0,
                 hysteresis: float = 0.05):
        self.steps, self.calls, self.order, self.max_run = steps, calls, order, max_run
        self.ucb, self.hysteresis = ErrorTableUCB(table, c), hysteresis
        self.skip: list[int] = []
        self._replan(force=True)

    def _replan(self, force: bool = False) -> None:
        est = self.ucb.estimate()
        new = plan_skips(est, self.steps, self.calls, self.order, self.max_run)
        if not force and plan_cost(est, self.steps, new, self.order) >= \
                (1 - self.hysteresis) * plan_cost(est, self.steps, self.skip, self.order):
            return
        self.play(new)

    def play(self, skip: list[int]) -> None:
        """Play ``skip`` from the next run on."""
        self.skip = list(skip)
        self._runs = runs_after(self.steps, self.skip)

    def run_length(self, k, limit):
        """The current plan's run of skips after real step k, at most ``limit`` (0 if none)."""
        return min(self._runs.get(k, 0), limit)

    def update(self, observations, nfe):
        """Feed each observation to ``ErrorTableUCB.observe``, end the run, and re-plan (kept only
        if the new plan beats the current one by the hysteresis). ``nfe`` is not used: every
        run makes exactly ``calls`` calls.

        Raises:
            ValueError: for a negative or non-finite error (``ErrorTableUCB.observe``; the
                observations before it are kept).
            IndexError: for a state or lead outside the table.
        """
        for o in observations:
            self.ucb.observe((o.k, *o.gaps), o.lead, o.error)
        self.ucb.end_run()
        self._replan()

    def schedule(self):
        """The optimal plan on the running estimate without the exploration bonus.

        Raises:
            ValueError: if no plan with ``calls`` calls has a finite planned error.
        """
        return plan_skips(self.ucb.estimate(optimistic=False), self.steps, self.calls, self.order, self.max_run)

    def state_dict(self):
        """``{"planner": ErrorTableUCB statistics, "plan": the plan played now}``."""
        return {"planner": self.ucb.state_dict(), "plan": list(self.skip)}

    def load_state_dict(self, state, calls, max_run):
        """Restore the planner's statistics and the plan it plays.

        Raises:
            ValueError: for missing or malformed statistics, or an invalid plan.
        """
        if not isinstance(state.get("planner"), dict):
            raise ValueError("'planner' statistics are missing")
        plan = check_plan(state.get("plan"), self.steps, calls, self.order, max_run)
        snap = self.snapshot()
        try:
            self.ucb.load_state_dict(state["planner"])
        except (KeyError, TypeError) as e:
            self.restore(snap)
            raise ValueError(f"'planner' is malformed ({type(e).__name__}: {e})") from None
        self.play(plan)

    def snapshot(self):
        """(counts, log sums, log square sums, runs, plan): three small tensors, cloned."""
        u = self.ucb
        return u.counts.clone(), u.log_sums.clone(), u.log_sq_sums.clone(), u.runs, list(self.skip)

    def restore(self, snapshot):
        """Go back to a ``snapshot``."""
        u = self.ucb
        u.counts, u.log_sums, u.log_sq_sums, u.runs, skip = snapshot
        self.play(skip)


class PaperBanditPolicy(SkipPolicy):
    """The paper's rule: at each real step k (order <= k <= T - 2) bandit k picks an arm m, the
    number of steps to extrapolate next (runs capped so that step T - 1 is real). At the real
    step that ends the run, bandit k is paid

        r = (mu * m - e) / scale,        e = ||v_hat - v|| / ||v|| there,

    scale = 1 (the paper's raw reward) or mu * max(arms) (``normalize=True``: the largest skip
    bonus is 1, the range UCB1's constant c = 2 is made for).

    With ``calls=K`` the reward per skip mu is a Lagrange multiplier for the budget: after each
    run, log mu += rate * (nfe - K) / (T - K), raising mu while runs make more than K calls
    and lowering it while they make fewer; stored rewards are shifted to the new mu so the
    bandits stay consistent (``Bandit.shift_rewards``), and ``scale`` stays at its first value.

    Args:
        steps: T.
        arms: candidate run lengths.
        kind: bandit registry name (``fastflow.bandit.BANDITS``).
        mu: reward per skipped step, in units of relative error.
        normalize: divide rewards by mu * max(arms).
        generator: for randomised bandits.
        calls: a call budget K for the Lagrange update, or None for a fixed mu.
        rate: step size of the Lagrange update.
        **bandit_kwargs: hyperparameters (``c``, ``epsilon``, ``prior_var``).

    Raises:
        ValueError: for a negative or non-finite mu, an empty ``arms``, an unknown ``kind``, or a
            bad hyperparameter value (``make_bandit``).
        TypeError: for a hyperparameter the bandit does not take.
    """

    name = "paper"

    def __init__(self, steps: int, arms: Sequence[int], order: int, kind: str, mu: float, normalize: bool = True,
                 generator: Optional[torch.Generator] = None, calls: Optional[int] = None, rate: float = 0.5,
                 **bandit_kwargs):
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"mu must be finite and >= 0, got {mu}")
        self.steps, self.arms, self.order, self.kind = steps, tuple(arms), order, kind
        self.mu, self.normalize, self.generator = float(mu), normalize, generator
        self.calls, self.rate = calls, rate
        scale = self.mu * max(self.arms)
        self.reward_scale = scale if normalize and scale > 0 else 1.0
        self.bandits: dict[int, Bandit] = {k: make_bandit(kind, len(self.arms), **bandit_kwargs)
                                           for k in range(order, steps - 1)}

    def seed(self, table: torch.Tensor) -> None:
        """One reward per feasible arm of every bandit, from the calibration run's table.

        Bandit k is paid ``reward(m, table[k, 1, ..., 1, m + 1])`` for every arm m with
        k + m + 1 <= T - 1 (the one-step-ahead errors, all gaps 1).

        Raises:
            ValueError: for a non-finite table entry among those (``Bandit.update``).
        """
        ones = (1,) * self.order
        for k, b in self.bandits.items():
            for i, m in enumerate(self.arms):
                if k + m + 1 <= self.steps - 1:
                    b.update(i, self.reward(m, float(table[(k, *ones, m + 1)])))

    def reward(self, m: int, error: float) -> float:
        """r = (mu * m - error) / scale."""
        return (self.mu * m - error) / self.reward_scale

    def run_length(self, k, limit):
        """Bandit k's pick among the arms m <= ``limit`` (0 at steps without a bandit or when no
        arm fits)."""
        if k not in self.bandits:
            return 0
        available = [i for i, m in enumerate(self.arms) if m <= limit]
        if not available:
            return 0
        return self.arms[self.bandits[k].select(available, self.generator)]

    def update(self, observations, nfe):
        """Pay bandit k the reward r = (mu * m - e) / scale for each observation (m = lead - 1
        skips, e its error); then, with a budget K < T, the Lagrange step
        mu <- mu * exp(rate * (nfe - K) / (T - K)) (``set_mu``). On an error the observations
        before the failing one stay recorded.

        Raises:
            KeyError: for an observation at a step k without a bandit (k < p or k >= T - 1).
            ValueError: for a lead - 1 that is not one of ``arms``, or a non-finite reward.
        """
        for o in observations:
            m = o.lead - 1
            self.bandits[o.k].update(self.arms.index(m), self.reward(m, o.error))
        if self.calls is not None and self.calls < self.steps:
            self.set_mu(self.mu * math.exp(self.rate * (nfe - self.calls) / (self.steps - self.calls)))

    def set_mu(self, mu: float) -> None:
        """Change mu, shifting every stored reward as if it had been paid with the new mu: arm m's
        rewards move by (mu_new - mu) * m / scale (``Bandit.shift_rewards``). Not validated."""
        for b in self.bandits.values():
            for i, m in enumerate(self.arms):
                b.shift_rewards(i, (mu - self.mu) * m / self.reward_scale)
        self.mu = mu

    def arm_counts(self) -> dict[int, list[int]]:
        """Pull counts per decision step k, in the order of ``arms``."""
        return {k: list(b.counts) for k, b in self.bandits.items()}

    def schedule(self):
        """Steps skipped if every bandit pulled its best-mean arm (a static schedule)."""
        skipped, k = [], 0
        while k < self.steps:
            b = self.bandits.get(k)
            if b is None:
                k += 1
                continue
            avail = [i for i, m in enumerate(self.arms) if k + m + 1 <= self.steps - 1]
            m = self.arms[max(avail, key=lambda i: (b.mean(i), -i))] if avail else 0
            skipped.extend(range(k + 1, k + 1 + m))
            k += m + 1
        return skipped

    def state_dict(self):
        """``{"mu", "reward_scale", "bandits": {str(k): bandit state}}``."""
        return {"mu": self.mu, "reward_scale": self.reward_scale,
                "bandits": {str(k): b.state_dict() for k, b in self.bandits.items()}}

    def load_state_dict(self, state, calls, max_run):
        """Restore mu, the reward scale and every bandit's statistics (all or nothing).

        Raises:
            ValueError: naming the field, for a bad mu or scale, or a missing or malformed bandit.
        """
        mu, scale = state.get("mu"), state.get("reward_scale")
        for name, value in (("mu", mu), ("reward_scale", scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "reward_scale" and value == 0):
                raise ValueError(f"'{name}' must be a finite number > 0 (mu >= 0), got {value!r}")
        bandits = state.get("bandits")
        if not isinstance(bandits, dict) or set(bandits) != {str(k) for k in self.bandits}:
            raise ValueError("'bandits' has entries for other steps than this sampler")
        snap = self.snapshot()
        try:
            for k, b in self.bandits.items():
                entry = bandits[str(k)]
                if not isinstance(entry, dict):
                    raise ValueError(f"'bandits' entry {k} is not an object")
                try:
                    b.load_state_dict(entry)
                except (KeyError, TypeError) as e:
                    raise ValueError(f"'bandits' entry {k} is malformed ({type(e).__name__}: {e})") from None
        except ValueError:
            self.restore(snap)
            raise
        self.mu, self.reward_scale = float(mu), float(scale)

    def snapshot(self):
        """(mu, per bandit (counts, sums, squared sums)): a few lists of floats."""
        return self.mu, self.reward_scale, {k: (list(b.counts), list(b.sums), list(b.sq_sums))
                                            for k, b in self.bandits.items()}

    def restore(self, snapshot):
        """Go back to a ``snapshot``."""
        self.mu, self.reward_scale, stats = snapshot
        for k, (counts, sums, sq) in stats.items():
            b = self.bandits[k]
            b.counts, b.sums, b.sq_sums = list(counts), list(sums), list(sq)
