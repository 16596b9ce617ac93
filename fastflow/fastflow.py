"""FastFlow: Euler sampling that skips model calls by extrapolating the velocity, with a
multi-armed bandit per step deciding how many steps to skip (Bajpai et al., ICLR 2026).

Time convention: t = 0 is noise, t = 1 is data, grid t_k = k / T, Euler update
x_{k+1} = x_k + dt * v_k. On a skipped step v_k is not computed but extrapolated, by
``fastflow.extrapolate.newton_extrapolate``, from the p + 1 most recent real
evaluations (p = ``order``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field as dc_field
from typing import Iterable, Optional, Sequence

import torch

from .atomic import atomic_write
from .bandit import BANDITS, Bandit, make_bandit
from .extrapolate import History, check_order
from .field import VelocityField
from .result import SampleResult
from .solvers import EulerSampler

__all__ = ["ExtrapolatedEulerSampler", "extrapolated_euler", "FastFlowSampler"]

STATE_FORMAT = "fastflow-bandit-state"
STATE_VERSION = 1


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error over every element of the batch (one number per batch)."""
    return torch.mean((a - b).square()).item()


class ExtrapolatedEulerSampler(EulerSampler):
    """Euler on the uniform grid where the steps in ``skip`` use an extrapolated velocity.

    A step k can be skipped only if at least ``order + 1`` real evaluations precede it,
    so step 0 is never skippable. A run makes exactly T - |skip| model calls.
    """

    def __init__(self, steps: int, skip: Iterable[int], order: int = 1):
        super().__init__(steps)
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
        return History(self.order + 1)

    def velocity(self, field, history, k, x):
        if k in self.skip:
            field.mark_skipped(k)
            return history.extrapolate(field.t(k), self.order)
        v = field.at(k, x)
        history.append(field.t(k), v)
        return v


def extrapolated_euler(velocity, x_init: torch.Tensor, steps: int, skip: Iterable[int],
                       order: int = 1, **extras) -> SampleResult:
    """Euler from t = 0 (noise) to t = 1 (data) with the steps in ``skip`` extrapolated.

    Args:
        velocity: ``velocity(x=x, t=t, **extras)``, x of shape (batch, ...), t of shape (batch,).
        x_init: noise, shape (batch, ...).
        steps: T, number of uniform steps.
        skip: the set S of step indices whose velocity is extrapolated (no model call).
        order: order p of the finite-difference extrapolation (p + 1 real points).

    Returns:
        SampleResult with nfe == T - |S| and skipped == sorted(S).
    """
    return ExtrapolatedEulerSampler(steps, skip, order).sample(velocity, x_init, **extras)


@dataclass
class _Run:
    """Per-call state of a FastFlow run."""

    history: History
    calibrating: bool
    remaining: int = 0                  # skips left in the current run of skips
    pending: Optional[tuple[int, int]] = None  # (decision step, arm index) awaiting its reward
    decisions: list = dc_field(default_factory=list)
    one_step_errors: list = dc_field(default_factory=list)
    arm_errors: list = dc_field(default_factory=list)  # (decision step, arm index, mse)


class FastFlowSampler(EulerSampler):
    """Euler sampling with bandit-chosen runs of extrapolated steps.

    At a step k where the model was just evaluated, the bandit of step k picks an arm
    m (number of following steps to extrapolate). Runs are capped so that a real
    evaluation always follows before the end (k + m + 1 <= T - 1). At that evaluation,
    step j = k + m + 1, the real velocity v_j is compared with the extrapolation
    v_hat_j from the same history, and bandit k receives

        r = (mu * m - MSE(v_hat_j, v_j)) / scale,

    with the MSE averaged over the batch (one decision per batch). ``scale`` is 1 for the
    raw reward of the paper, or mu * max(arms) with ``normalize_rewards=True`` so that the
    largest skip bonus is 1, the range UCB1's exploration constant is made for.

    The first call is always a full Euler run (nfe == T). It calibrates
    mu = max_k MSE(v_hat_k, v_k) / T from the one-step-ahead order-p predictions if mu
    was not given, and gives every bandit one reward per feasible arm, computed from
    the full trajectory. Bandit state persists across calls; see ``save_state``.

    Args:
        steps: T.
        arms: candidate run lengths (distinct non-negative ints).
        mu: reward per skipped step; None to calibrate on the first call.
        order: extrapolation order p (1 or 2 in the paper's spirit; any p >= 1 works).
        bandit: ``"ucb1"``, ``"epsilon-greedy"`` or ``"thompson"``.
        normalize_rewards: divide rewards by mu * max(arms).
        generator: torch.Generator for randomised bandits (UCB1 needs none).
        **bandit_kwargs: hyperparameters of the bandit (``c``, ``epsilon``, ``prior_var``).
    """

    def __init__(self, steps: int, arms: Sequence[int] = (0, 1, 2, 3, 4), mu: Optional[float] = None,
                 order: int = 1, bandit: str = "ucb1", normalize_rewards: bool = True,
                 generator: Optional[torch.Generator] = None, **bandit_kwargs):
        super().__init__(steps)
        arms = tuple(arms)
        if not arms or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in arms):
            raise ValueError(f"arms must be a non-empty sequence of non-negative ints, got {arms}")
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms must be distinct, got {arms}")
        if mu is not None and not mu >= 0:
            raise ValueError(f"mu must be >= 0 or None, got {mu}")
        if bandit not in BANDITS:
            raise ValueError(f"unknown bandit '{bandit}', choose from {sorted(BANDITS)}")
        self.order = check_order(order)
        self.arms = arms
        self.mu = mu
        self.bandit_kind = bandit
        self.normalize_rewards = normalize_rewards
        self.generator = generator
        self.reward_scale = 1.0
        self.calibrated = False
        # One bandit per step that can make a decision: enough history, and a real step after it.
        self.bandits: dict[int, Bandit] = {
            k: make_bandit(bandit, len(arms), **bandit_kwargs) for k in range(order, steps - 1)}

    # -- the step rule ---------------------------------------------------------------

    def start(self, field):
        size = self.order + 2 + max(self.arms)  # room to replay the longest arm at calibration
        return _Run(history=History(size), calibrating=not self.calibrated)

    def velocity(self, field: VelocityField, run: _Run, k: int, x: torch.Tensor) -> torch.Tensor:
        if run.remaining > 0:
            run.remaining -= 1
            field.mark_skipped(k)
            return run.history.extrapolate(field.t(k), self.order)
        v = field.at(k, x)
        t = field.t(k)
        if run.pending is not None:
            decided_at, arm = run.pending
            err = _mse(run.history.extrapolate(t, self.order), v)
            self.bandits[decided_at].update(arm, self.reward(self.arms[arm], err))
            run.pending = None
        run.history.append(t, v)
        if run.calibrating:
            self._record_errors(run, k, t, v)
        elif k in self.bandits:
            self._decide(field, run, k)
        return v

    def _decide(self, field: VelocityField, run: _Run, k: int) -> None:
        available = [i for i, m in enumerate(self.arms) if k + m + 1 <= field.steps - 1]
        if not available:
            return
        arm = self.bandits[k].select(available, self.generator)
        run.pending = (k, arm)
        run.remaining = self.arms[arm]
        run.decisions.append((k, self.arms[arm]))

    def _record_errors(self, run: _Run, j: int, t: float, v: torch.Tensor) -> None:
        """Full run: what each arm decided at k = j - m - 1 would have cost at step j."""
        h = run.history
        if len(h) >= self.order + 2:
            run.one_step_errors.append(_mse(h.extrapolate(t, self.order, drop_last=1), v))
        for i, m in enumerate(self.arms):
            if j - m - 1 in self.bandits:
                run.arm_errors.append((j - m - 1, i, _mse(h.extrapolate(t, self.order, drop_last=m + 1), v)))

    def finish(self, field, run):
        if run.calibrating:
            if self.mu is None:
                self.mu = max(run.one_step_errors, default=0.0) / field.steps
            scale = self.mu * max(self.arms)
            self.reward_scale = scale if self.normalize_rewards and scale > 0 else 1.0
            for decided_at, arm, err in run.arm_errors:
                self.bandits[decided_at].update(arm, self.reward(self.arms[arm], err))
            self.calibrated = True
        return {"decisions": run.decisions, "mu": self.mu, "calibration_run": run.calibrating}

    def reward(self, m: int, err: float) -> float:
        """r = (mu * m - err) / scale."""
        return (self.mu * m - err) / self.reward_scale

    # -- inspection ------------------------------------------------------------------

    def arm_counts(self) -> dict[int, list[int]]:
        """Pull counts per decision step, in the order of ``arms``."""
        return {k: list(b.counts) for k, b in self.bandits.items()}

    def greedy_schedule(self) -> list[int]:
        """Steps skipped if every bandit pulled its best-mean arm: a static schedule."""
        skipped, k = [], 0
        while k < self.steps:
            b = self.bandits.get(k)
            if b is None or not self.calibrated:
                k += 1
                continue
            avail = [i for i, m in enumerate(self.arms) if k + m + 1 <= self.steps - 1]
            m = self.arms[max(avail, key=lambda i: (b.mean(i), -i))] if avail else 0
            skipped.extend(range(k + 1, k + 1 + m))
            k += m + 1
        return skipped

    # -- persistence -----------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "steps": self.steps,
                "arms": list(self.arms), "order": self.order, "bandit": self.bandit_kind,
                "mu": self.mu, "normalize_rewards": self.normalize_rewards,
                "reward_scale": self.reward_scale, "calibrated": self.calibrated,
                "bandits": {str(k): b.state_dict() for k, b in self.bandits.items()}}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a FastFlow bandit state (missing 'format': "
                             f"'{STATE_FORMAT}')")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"bandit state version {state.get('version')} is not supported "
                             f"(expected {STATE_VERSION})")
        mine = {"steps": self.steps, "arms": list(self.arms), "order": self.order,
                "bandit": self.bandit_kind, "normalize_rewards": self.normalize_rewards}
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            diff = ", ".join(f"{k}={theirs[k]!r} (sampler has {mine[k]!r})" for k in mine if theirs[k] != mine[k])
            raise ValueError(f"bandit state does not match this sampler: {diff}")
        if self.mu is not None and state["mu"] is not None and state["mu"] != self.mu:
            raise ValueError(f"bandit state was learned with mu={state['mu']}, sampler has mu={self.mu}")
        if set(state["bandits"]) != {str(k) for k in self.bandits}:
            raise ValueError("bandit state has bandits for other steps than this sampler")
        loaded = {}
        for k, b in self.bandits.items():  # load into copies: a bad entry leaves the sampler untouched
            loaded[k] = make_bandit(self.bandit_kind, len(self.arms), **b.hyperparameters())
            loaded[k].load_state_dict(state["bandits"][str(k)])
        self.bandits = loaded
        self.mu = state["mu"]
        self.reward_scale = float(state["reward_scale"])
        self.calibrated = bool(state["calibrated"])

    def save_state(self, path: str | os.PathLike) -> None:
        """Write the bandit state as JSON, atomically (temporary file, then rename)."""
        atomic_write(path, lambda f: json.dump(self.state_dict(), f), binary=False)

    def load_state(self, path: str | os.PathLike) -> None:
        """Load a state written by ``save_state``; a corrupt or mismatched file raises ValueError."""
        try:
            with open(path) as f:
                state = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: corrupt bandit state file ({e})") from None
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: malformed bandit state ({type(e).__name__}: {e})") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        return (f"FastFlowSampler(steps={self.steps}, arms={self.arms}, mu={self.mu}, order={self.order}, "
                f"bandit='{self.bandit_kind}')")
