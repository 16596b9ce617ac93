"""Multi-armed bandits, from scratch, behind one small interface.

A bandit over n arms keeps, per arm, the number of pulls n_a and the sum of rewards.
``select(available)`` returns the index of the arm to pull among ``available`` (all arms
if None); ``update(arm, reward)`` records an observed reward. Arms never pulled are
tried first, lowest index first, in every policy. ``state_dict`` is plain JSON-able data
and ``load_state_dict`` restores it exactly.

Randomised policies take an optional ``torch.Generator``; the library never seeds.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

__all__ = ["Bandit", "UCB1", "EpsilonGreedy", "GaussianThompson", "BANDITS", "make_bandit"]


class Bandit:
    """Base class: pull counts, reward sums, and the shared bookkeeping."""

    kind = "base"

    def __init__(self, n_arms: int):
        if n_arms < 1:
            raise ValueError(f"a bandit needs at least one arm, got {n_arms}")
        self.n_arms = n_arms
        self.counts = [0] * n_arms
        self.sums = [0.0] * n_arms
        self.sq_sums = [0.0] * n_arms

    @property
    def total(self) -> int:
        return sum(self.counts)

    def mean(self, a: int) -> float:
        return self.sums[a] / self.counts[a] if self.counts[a] else 0.0

    def _candidates(self, available: Optional[Sequence[int]]) -> list[int]:
        arms = list(range(self.n_arms)) if available is None else list(available)
        if not arms:
            raise ValueError("select() needs at least one available arm")
        return arms

    def select(self, available: Optional[Sequence[int]] = None,
               generator: Optional[torch.Generator] = None) -> int:
        arms = self._candidates(available)
        untried = [a for a in arms if self.counts[a] == 0]
        if untried:
            return untried[0]
        return self._choose(arms, generator)

    def _choose(self, arms: list[int], generator: Optional[torch.Generator]) -> int:
        raise NotImplementedError

    def update(self, arm: int, reward: float) -> None:
        if not 0 <= arm < self.n_arms:
            raise IndexError(f"arm {arm} out of range for {self.n_arms} arms")
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        self.counts[arm] += 1
        self.sums[arm] += reward
        self.sq_sums[arm] += reward * reward

    def hyperparameters(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"kind": self.kind, "n_arms": self.n_arms, "hyper": self.hyperparameters(),
                "counts": list(self.counts), "sums": list(self.sums), "sq_sums": list(self.sq_sums)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind or state.get("n_arms") != self.n_arms:
            raise ValueError(f"bandit state is for {state.get('kind')} with {state.get('n_arms')} arms, "
                             f"this is {self.kind} with {self.n_arms}")
        for key in ("counts", "sums", "sq_sums"):
            if len(state[key]) != self.n_arms:
                raise ValueError(f"bandit state '{key}' has {len(state[key])} entries, expected {self.n_arms}")
        self.counts = [int(c) for c in state["counts"]]
        self.sums = [float(s) for s in state["sums"]]
        self.sq_sums = [float(s) for s in state["sq_sums"]]
        for name, value in state.get("hyper", {}).items():
            setattr(self, name, value)


class UCB1(Bandit):
    """UCB1 (Auer et al., 2002): pull argmax_a  mean_a + sqrt(c * ln(n) / n_a).

    n is the total number of pulls; c = 2 is the classical constant, derived for
    rewards in [0, 1]. Deterministic: ties go to the lowest arm index.
    """

    kind = "ucb1"

    def __init__(self, n_arms: int, c: float = 2.0):
        super().__init__(n_arms)
        if c < 0:
            raise ValueError(f"UCB1 exploration constant must be >= 0, got {c}")
        self.c = c

    def hyperparameters(self):
        return {"c": self.c}

    def _choose(self, arms, generator):
        log_n = math.log(max(self.total, 1))
        return max(arms, key=lambda a: (self.mean(a) + math.sqrt(self.c * log_n / self.counts[a]), -a))


class EpsilonGreedy(Bandit):
    """With probability epsilon a uniformly random available arm, else the best mean."""

    kind = "epsilon-greedy"

    def __init__(self, n_arms: int, epsilon: float = 0.1):
        super().__init__(n_arms)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def hyperparameters(self):
        return {"epsilon": self.epsilon}

    def _choose(self, arms, generator):
        if torch.rand((), generator=generator).item() < self.epsilon:
            return arms[int(torch.randint(len(arms), (), generator=generator))]
        return max(arms, key=lambda a: (self.mean(a), -a))


class GaussianThompson(Bandit):
    """Gaussian Thompson sampling: draw theta_a ~ N(mean_a, s^2 / n_a), pull argmax theta_a.

    s^2 is the pooled sample variance of all rewards seen (``prior_var`` until two
    rewards exist), so the rule is invariant to the scale of the rewards.
    """

    kind = "thompson"

    def __init__(self, n_arms: int, prior_var: float = 1.0):
        super().__init__(n_arms)
        if prior_var <= 0:
            raise ValueError(f"prior_var must be > 0, got {prior_var}")
        self.prior_var = prior_var

    def hyperparameters(self):
        return {"prior_var": self.prior_var}

    def _pooled_var(self) -> float:
        n = self.total
        if n < 2:
            return self.prior_var
        mean = sum(self.sums) / n
        var = (sum(self.sq_sums) - n * mean * mean) / (n - 1)
        return max(var, 1e-300)

    def _choose(self, arms, generator):
        var = self._pooled_var()
        noise = torch.randn(len(arms), generator=generator, dtype=torch.float64).tolist()
        draws = [self.mean(a) + math.sqrt(var / self.counts[a]) * z for a, z in zip(arms, noise)]
        return arms[max(range(len(arms)), key=lambda i: draws[i])]


BANDITS = {"ucb1": UCB1, "epsilon-greedy": EpsilonGreedy, "thompson": GaussianThompson}


def make_bandit(kind: str, n_arms: int, **hyper) -> Bandit:
    """Build a bandit by registry name (``BANDITS`` keys)."""
    if kind not in BANDITS:
        raise ValueError(f"unknown bandit '{kind}', choose from {sorted(BANDITS)}")
    return BANDITS[kind](n_arms, **hyper)
