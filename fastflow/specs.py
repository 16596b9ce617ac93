"""Skip policies as settings: one frozen dataclass per policy, holding that policy's settings and
nothing else. A spec checks its settings when it is made and builds the live policy
(``fastflow.policy``) from a calibration record (``fastflow.persist.Calibration``); the
controller only ever dispatches to it.

    FastFlowSampler(50, calls=16, policy=Plan())
    FastFlowSampler(50, calls=16, policy=PlanningBandit(explore=0.3))
    FastFlowSampler(50, calls=16, policy=PaperBandit(arms=(0, 1, 2), kind="thompson", generator=g))

The strings ``"plan"``, ``"bandit"`` and ``"paper"`` are shorthands for the default specs, and the
flat keywords of earlier versions (``mu=``, ``arms=``, ``bandit=``, ``explore=``, ...) still
build a spec through ``policy_spec``; a keyword that belongs to another policy is an error.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

import torch

from . import checks
from .bandit import BANDITS, make_bandit
from .persist import Calibration
from .policy import PaperBanditPolicy, PlanningBanditPolicy, PlanPolicy, SkipPolicy

__all__ = ["PolicySpec", "Plan", "PlanningBandit", "PaperBandit", "policy_spec", "POLICIES", "DEFAULT_MAX_RUN"]

DEFAULT_MAX_RUN = 6


class PolicySpec:
    """Interface of a policy's settings.

    ``name``: the shorthand string; ``default_tolerance``: whether a sampler given neither
    ``calls`` nor ``tolerance`` uses ``DEFAULT_TOLERANCE`` (the paper bandit without a budget keeps
    its fixed or calibrated mu instead); ``fixed_runs``: whether the policy sets the longest run R
    itself (the paper bandit's is max(arms)), so that a loop passes no ``max_run``.

    Raises:
        NotImplementedError: from ``build`` on the interface.
    """

    name: ClassVar[str] = "base"
    default_tolerance: ClassVar[bool] = True
    fixed_runs: ClassVar[bool] = False  # whether R is set by the policy itself (the paper's arms)

    def run_limit(self, max_run: Optional[int], steps: int) -> int:
        """The longest run of skips R, from the sampler's ``max_run`` (None: the default).

        Raises:
            ValueError: for a ``max_run`` that is not an int in [1, steps].
        """
        return DEFAULT_MAX_RUN if max_run is None else checks.int_in("max_run", max_run, 1, steps)

    def build(self, record: Calibration, calls: Optional[int]) -> SkipPolicy:
        """The live policy for a calibration ``record`` and call budget K (None: no budget).

        Raises:
            NotImplementedError: on the interface.
        """
        raise NotImplementedError

    def restore(self, record: Calibration, calls: Optional[int], state: dict) -> SkipPolicy:
        """A live policy holding what ``state`` (a saved FastFlow state) says it learned.

        Raises:
            ValueError: naming the field, for a malformed or mismatched entry.
        """
        policy = self.empty(record, calls)
        policy.load_state_dict(state, calls, record.max_run)
        return policy

    def empty(self, record: Calibration, calls: Optional[int]) -> SkipPolicy:
        """A live policy to load a saved state into (``restore``); by default the built one."""
        return self.build(record, calls)

    def config(self) -> dict:
        """The settings a saved state must have been learned with (beyond the sampler's own)."""
        return {}

    def info(self, policy: SkipPolicy) -> dict:
        """Extra ``SampleResult.info`` entries of a run played by ``policy``."""
        return {}


@dataclass(frozen=True)
class Plan(PolicySpec):
    """The exact optimum of ``fastflow.plan_skips`` on the calibration table, played on every run:
    no decision cost beyond a dict lookup, no host reads, nothing learned after calibration.

    Raises:
        Nothing of its own (it has no settings).
    """

    name: ClassVar[str] = "plan"

    def build(self, record, calls):
        """The optimal plan with exactly ``calls`` calls, as a ``PlanPolicy``."""
        return PlanPolicy(record.steps, record.plan(calls), record.order)

    def empty(self, record, calls):
        """A ``PlanPolicy`` with no skips, for ``restore`` to load the saved plan into."""
        return PlanPolicy(record.steps, [], record.order)


@dataclass(frozen=True)
class PlanningBandit(PolicySpec):
    """A planning bandit: re-plans exactly K calls after each run from an optimistic running
    estimate of the table (``fastflow.bandit.ErrorTableUCB``).

    Args:
        explore: the exploration constant c >= 0 (finite).

    Raises:
        ValueError: for an ``explore`` that is not a finite number >= 0.
    """

    explore: float = 0.5
    name: ClassVar[str] = "bandit"

    def __post_init__(self):
        checks.finite("explore", self.explore, lo=0.0)

    def build(self, record, calls):
        """A ``PlanningBanditPolicy`` seeded with the record's table, planning ``calls`` calls."""
        return PlanningBanditPolicy(record.table, record.steps, calls, record.order, record.max_run, c=self.explore)

    def config(self):
        """``explore``."""
        return {"explore": self.explore}


@dataclass(frozen=True)
class PaperBandit(PolicySpec):
    """The paper's per-step bandits (``fastflow.policy.PaperBanditPolicy``): at each real step k,
    bandit k picks how many steps to extrapolate next, paid r = (mu * m - e) / scale at the real
    step that ends the run. Its runs are its arms: R = max(arms).

    Args:
        arms: the run lengths to choose from, distinct ints >= 0, at least one >= 1.
        mu: the reward per skipped step (relative-error units); None calibrates it as
            max_k e_k / T over the one-step-ahead errors, or, with a budget K, starts the Lagrange
            multiplier at the optimal plan's mean error per skip.
        kind: the bandit, ``"ucb1"``, ``"epsilon-greedy"`` or ``"thompson"``.
        c, epsilon, prior_var: that bandit's hyperparameter (None: its default).
        normalize: divide rewards by mu * max(arms) (False: the paper's raw reward).
        generator: torch.Generator for the randomised bandits (UCB1 needs none).

    Raises:
        ValueError: for bad arms, a negative or non-finite mu (or one whose reward mu * max(arms)
            overflows), an unknown kind, or a bad hyperparameter value.
        TypeError: for a hyperparameter the chosen bandit does not take.
    """

    arms: Sequence[int] = (0, 1, 2, 3, 4)
    mu: Optional[float] = None
    kind: str = "ucb1"
    c: Optional[float] = None
    epsilon: Optional[float] = None
    prior_var: Optional[float] = None
    normalize: bool = True
    generator: Optional[torch.Generator] = field(default=None, compare=False, repr=False)
    name: ClassVar[str] = "paper"
    default_tolerance: ClassVar[bool] = False
    fixed_runs: ClassVar[bool] = True

    def __post_init__(self):
        arms = tuple(self.arms)
        if not arms or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in arms):
            raise ValueError(f"arms must be a non-empty sequence of non-negative ints, got {arms}")
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms must be distinct, got {arms}")
        if max(arms) < 1:
            raise ValueError(f"arms must allow at least one skip (max(arms) >= 1), got {arms}")
        object.__setattr__(self, "arms", arms)
        if self.mu is not None:
            checks.finite("mu", self.mu, lo=0.0, what="finite and >= 0, or None")
            if not math.isfinite(self.mu * max(arms)):
                raise ValueError(f"mu={self.mu} overflows the reward mu * max(arms)")
        if self.kind not in BANDITS:
            raise ValueError(f"unknown bandit '{self.kind}', choose from {sorted(BANDITS)}")
        make_bandit(self.kind, len(arms), **self.hyper())  # the bandit checks its own hyperparameters

    def hyper(self) -> dict:
        """The bandit's hyperparameters that were given."""
        return {k: v for k, v in (("c", self.c), ("epsilon", self.epsilon), ("prior_var", self.prior_var))
                if v is not None}

    def run_limit(self, max_run, steps):
        """max(arms): the paper policy's runs are its arms.

        Raises:
            ValueError: for a ``max_run`` given that differs from max(arms).
        """
        if max_run is not None and max_run != max(self.arms):
            raise ValueError(f"the paper policy's runs are its arms: max_run={max_run} != max(arms)={max(self.arms)}")
        return max(self.arms)

    def _policy(self, record: Calibration, mu: float, calls: Optional[int]) -> PaperBanditPolicy:
        return PaperBanditPolicy(record.steps, self.arms, record.order, self.kind, mu, self.normalize,
                                 self.generator, calls=calls, **self.hyper())

    def build(self, record, calls):
        """Per-step bandits with mu given or calibrated (class docstring), each seeded with one
        reward per arm from the record's one-step-ahead table entries."""
        T = record.steps
        if self.mu is not None:
            mu = self.mu
        elif calls is not None:  # Lagrange start: the plan's mean error per skip
            mu = float(record.costs[calls]) / max(T - calls, 1)
        else:
            mu = max(record.one_step_errors(), default=0.0) / T
        policy = self._policy(record, mu, calls)
        policy.seed(record.table)
        return policy

    def restore(self, record, calls, state):
        """Per-step bandits holding a saved state's mu, reward scale and statistics.

        Raises:
            ValueError: naming the field, for a malformed entry, or a state learned with another
                fixed mu (no budget).
        """
        if self.mu is not None and calls is None and state.get("mu") != self.mu:
            raise ValueError(f"state was learned with mu={state.get('mu')}, sampler has mu={self.mu}")
        policy = self._policy(record, self.mu or 0.0, calls)
        policy.load_state_dict(state, calls, record.max_run)
        return policy

    def config(self):
        """``arms``, ``bandit`` (the kind) and ``normalize_rewards``."""
        return {"arms": list(self.arms), "bandit": self.kind, "normalize_rewards": self.normalize}

    def info(self, policy):
        """``mu``: the reward per skip the run was played with (None before calibration)."""
        return {"mu": getattr(policy, "mu", self.mu)}


POLICIES = {spec.name: spec for spec in (Plan, PlanningBandit, PaperBandit)}

# the flat keywords of earlier versions, each belonging to one policy
_PAPER_KEYS = {"arms": "arms", "mu": "mu", "bandit": "kind", "normalize_rewards": "normalize",
               "generator": "generator", "c": "c", "epsilon": "epsilon", "prior_var": "prior_var"}
_BANDIT_KEYS = {"explore": "explore"}
_OWNER = {**{k: "paper" for k in _PAPER_KEYS}, **{k: "bandit" for k in _BANDIT_KEYS}}


def policy_spec(policy=None, **settings) -> PolicySpec:
    """The spec a ``policy`` argument names: a spec as it is, a shorthand string with its
    settings as flat keywords (``mu=``, ``arms=``, ``bandit=``, ``normalize_rewards=``,
    ``generator=``, ``c=``, ``epsilon=``, ``prior_var=`` for ``"paper"``; ``explore=`` for
    ``"bandit"``; a keyword set to None counts as not given), or None: ``"paper"`` if a paper
    keyword is given, else ``"plan"``.

    Raises:
        ValueError: for an unknown policy name, settings given beside a spec, or a setting that
            belongs to another policy; the spec's own errors for bad values.
        TypeError: for a keyword no policy takes.
    """
    settings = {k: v for k, v in settings.items() if v is not None}  # None: not given
    unknown = sorted(set(settings) - set(_OWNER))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}: no skip policy takes them")
    if isinstance(policy, PolicySpec):
        if settings:
            raise ValueError(f"give {', '.join(sorted(settings))} inside the policy spec "
                             f"({type(policy).__name__}(...)), not beside it")
        return policy
    if policy is None:  # a paper keyword only means something to the paper policy
        policy = "paper" if any(_OWNER[k] == "paper" for k in settings) else "plan"
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}, choose from {list(POLICIES)} or a spec "
                         f"(Plan(), PlanningBandit(), PaperBandit())")
    foreign = sorted(k for k in settings if _OWNER[k] != policy)
    if foreign:
        if "mu" in foreign:
            raise ValueError(f"mu is the paper bandit's reward per skip; policy '{policy}' takes calls or tolerance")
        if set(foreign) & {"bandit", "c", "epsilon", "prior_var"}:
            raise ValueError(f"bandit and its hyperparameters belong to the paper policy, not '{policy}'")
        owners = sorted({_OWNER[k] for k in foreign})
        raise ValueError(f"{', '.join(foreign)} belong(s) to the {' and '.join(map(repr, owners))} policy, "
                         f"not '{policy}'")
    keys = _PAPER_KEYS if policy == "paper" else _BANDIT_KEYS
    return POLICIES[policy](**{keys[k]: v for k, v in settings.items()})

