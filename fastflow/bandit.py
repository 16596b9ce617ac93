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

from . import checks

__all__ = ["Bandit", "UCB1", "EpsilonGreedy", "GaussianThompson", "BANDITS", "make_bandit", "ErrorTableUCB"]


class Bandit:
    """Base class: pull counts, reward sums, and the shared bookkeeping.

    Per arm a it keeps n_a (``counts``), sum_i r_i (``sums``) and sum_i r_i^2 (``sq_sums``);
    ``mean(a)`` is sums[a] / n_a. Subclasses choose among tried arms (``_choose``).

    Args:
        n_arms: number of arms, >= 1.

    Raises:
        ValueError: for ``n_arms`` < 1.
    """

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
        """Total number of pulls, sum_a n_a."""
        return sum(self.counts)

    def mean(self, a: int) -> float:
        """Mean reward of arm ``a``, sums[a] / n_a (0.0 while the arm is untried).

        Raises:
            IndexError: for an arm index outside 0..n_arms - 1.
        """
        self._check_arm(a)
        return self.sums[a] / self.counts[a] if self.counts[a] else 0.0

    def _candidates(self, available: Optional[Sequence[int]]) -> list[int]:
        arms = list(range(self.n_arms)) if available is None else list(available)
        if not arms:
            raise ValueError("select() needs at least one available arm")
        for a in arms:
            self._check_arm(a)
        return arms

    def _check_arm(self, a: int) -> None:
        if not checks.is_int(a) or not 0 <= a < self.n_arms:
            raise IndexError(f"arm {a!r} out of range for {self.n_arms} arms")

    def select(self, available: Optional[Sequence[int]] = None,
               generator: Optional[torch.Generator] = None) -> int:
        """Index of the arm to pull among ``available`` (all arms if None): the lowest untried
        one if any, else the subclass's rule (``generator`` for the randomised ones).

        Raises:
            ValueError: for an empty ``available``.
            IndexError: for an available arm index outside 0..n_arms - 1.
            NotImplementedError: on the base class once every available arm has been tried.
        """
        arms = self._candidates(available)
        untried = [a for a in arms if self.counts[a] == 0]
        if untried:
            return untried[0]
        return self._choose(arms, generator)

    def _choose(self, arms: list[int], generator: Optional[torch.Generator]) -> int:
        raise NotImplementedError

    def update(self, arm: int, reward: float) -> None:
        """Record one pull of ``arm`` that paid ``reward``: n_a += 1, sums[a] += r, sq_sums[a] += r^2.

        Raises:
            IndexError: for an arm outside [0, n_arms - 1].
            ValueError: for a non-finite reward (or a string that is not a number).
            TypeError: for a reward that is not a number.
        """
        if not 0 <= arm < self.n_arms:
            raise IndexError(f"arm {arm} out of range for {self.n_arms} arms")
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        self.counts[arm] += 1
        self.sums[arm] += reward
        self.sq_sums[arm] += reward * reward

    def shift_rewards(self, arm: int, delta: float) -> None:
        """Add ``delta`` to every reward recorded for ``arm``, as if it had always been paid
        (used when a Lagrange multiplier in the reward changes; exact for sums and squares):
        sums[a] += n_a delta, sq_sums[a] += 2 delta sums[a] + n_a delta^2.

        Raises:
            IndexError: for an arm index >= ``n_arms``.
        """
        n, s = self.counts[arm], self.sums[arm]
        self.sums[arm] = s + n * delta
        self.sq_sums[arm] += 2 * delta * s + n * delta * delta

    def hyperparameters(self) -> dict:
        """The constructor's hyperparameters by name (none for the base class)."""
        return {}

    def state_dict(self) -> dict:
        """Plain JSON-able state: ``kind``, ``n_arms``, ``hyper`` (``hyperparameters()``),
        ``counts``, ``sums`` and ``sq_sums``; ``load_state_dict`` restores it exactly."""
        return {"kind": self.kind, "n_arms": self.n_arms, "hyper": self.hyperparameters(),
                "counts": list(self.counts), "sums": list(self.sums), "sq_sums": list(self.sq_sums)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the pull statistics; nothing changes unless all of the state is valid.

        Hyperparameters are the constructor's: a state's ``hyper`` may only repeat them (same
        names, same values), so a file can neither set other attributes nor silently change c,
        epsilon or the prior.

        Raises:
            ValueError: naming the field, for another kind or arm count, unknown or missing keys,
                counts that are not ints >= 0, non-finite sums, negative squared sums, or
                hyperparameters that are unknown or differ from this bandit's.
        """
        if not isinstance(state, dict):
            raise ValueError(f"bandit state must be an object, got {type(state).__name__}")
        keys = {"kind", "n_arms", "hyper", "counts", "sums", "sq_sums"}
        if set(state) - keys or not {"kind", "n_arms", "counts", "sums", "sq_sums"} <= set(state):
            raise ValueError(f"bandit state has keys {sorted(state)}, expected {sorted(keys)}")
        if state["kind"] != self.kind or state["n_arms"] != self.n_arms:
            raise ValueError(f"bandit state is for {state['kind']} with {state['n_arms']} arms, "
                             f"this is {self.kind} with {self.n_arms}")
        for key in ("counts", "sums", "sq_sums"):
            if not isinstance(state[key], list) or len(state[key]) != self.n_arms:
                raise ValueError(f"bandit state '{key}' must list {self.n_arms} numbers")
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in state["counts"]):
            raise ValueError(f"bandit state 'counts' must be ints >= 0, got {state['counts']}")
        if not all(number(v) for v in state["sums"]) or not all(number(v) and v >= 0 for v in state["sq_sums"]):
            raise ValueError("bandit state 'sums' must be finite and 'sq_sums' finite and >= 0")
        hyper, mine = state.get("hyper", {}), self.hyperparameters()
        if not isinstance(hyper, dict) or set(hyper) - set(mine):
            raise ValueError(f"bandit state 'hyper' may only hold {sorted(mine)}, got {hyper!r}")
        differ = {k: v for k, v in hyper.items() if v != mine[k]}
        if differ:
            raise ValueError(f"bandit state was learned with {differ}, this bandit has "
                             f"{ {k: mine[k] for k in differ} } (build it with the same hyperparameters)")
        self.counts = list(state["counts"])
        self.sums = [float(v) for v in state["sums"]]
        self.sq_sums = [float(v) for v in state["sq_sums"]]


class UCB1(Bandit):
    """UCB1 (Auer et al., 2002): pull argmax_a  mean_a + sqrt(c * ln(n) / n_a).

    n is the total number of pulls; c = 2 is the classical constant, derived for
    rewards in [0, 1]. Deterministic: ties go to the lowest arm index.

    Args:
        n_arms: number of arms, >= 1.
        c: exploration constant, >= 0.

    Raises:
        ValueError: for ``n_arms`` < 1 or c < 0.
    """

    kind = "ucb1"

    def __init__(self, n_arms: int, c: float = 2.0):
        super().__init__(n_arms)
        if c < 0:
            raise ValueError(f"UCB1 exploration constant must be >= 0, got {c}")
        self.c = c

    def hyperparameters(self):
        """``{"c": c}``."""
        return {"c": self.c}

    def _choose(self, arms, generator):
        log_n = math.log(max(self.total, 1))
        return max(arms, key=lambda a: (self.mean(a) + math.sqrt(self.c * log_n / self.counts[a]), -a))


class EpsilonGreedy(Bandit):
    """With probability epsilon a uniformly random available arm, else the best mean.

    Ties between best means go to the lowest arm index; draws use the ``generator`` given to
    ``select``.

    Args:
        n_arms: number of arms, >= 1.
        epsilon: exploration probability, in [0, 1].

    Raises:
        ValueError: for ``n_arms`` < 1 or an epsilon outside [0, 1].
    """

    kind = "epsilon-greedy"

    def __init__(self, n_arms: int, epsilon: float = 0.1):
        super().__init__(n_arms)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def hyperparameters(self):
        """``{"epsilon": epsilon}``."""
        return {"epsilon": self.epsilon}

    def _choose(self, arms, generator):
        if torch.rand((), generator=generator).item() < self.epsilon:
            return arms[int(torch.randint(len(arms), (), generator=generator))]
        return max(arms, key=lambda a: (self.mean(a), -a))


class GaussianThompson(Bandit):
    """Gaussian Thompson sampling: draw theta_a ~ N(mean_a, s^2 / n_a), pull argmax theta_a.

    s^2 is the pooled sample variance of all rewards seen (``prior_var`` until two
    rewards exist), so the rule is invariant to the scale of the rewards. Draws use the
    ``generator`` given to ``select``.

    Args:
        n_arms: number of arms, >= 1.
        prior_var: s^2 before two rewards exist, > 0.

    Raises:
        ValueError: for ``n_arms`` < 1 or ``prior_var`` <= 0.
    """

    kind = "thompson"

    def __init__(self, n_arms: int, prior_var: float = 1.0):
        super().__init__(n_arms)
        if prior_var <= 0:
            raise ValueError(f"prior_var must be > 0, got {prior_var}")
        self.prior_var = prior_var

    def hyperparameters(self):
        """``{"prior_var": prior_var}``."""
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


class ErrorTableUCB:
    """Optimistic running estimate of an error table, for a planner (a combinatorial bandit).

    The prior is the table of one full run (``fastflow.errors``). What sampling reveals is one
    error per visited state s = (k, g_1..g_p): at the real step that ends a run of skips, the
    extrapolation from s is compared with the real velocity. Each observation e at lead i
    gives a log-ratio l = log(e / table[s, i]); the estimate of every lead of s is the table
    row scaled by exp(mean l), because the skipped steps of a run share its nodes (the
    interpolation error is f^(p+1)(xi) / (p+1)! times a factor that depends only on the
    lead, so a change of f^(p+1) scales the whole row). The calibration run itself counts as
    one observation with l = 0.

    The planner is given the lower confidence bound

        table[s, i] * exp(mean_l(s) - sigma * sqrt(c * ln N / n(s))),

    N the number of runs seen, n(s) the observations of s, sigma the pooled standard deviation
    of the log-ratios (``prior_sigma`` until 10 repeated observations exist): UCB1's bonus on a
    multiplicative scale (errors span decades) in units of the observed batch-to-batch
    spread. States seldom visited look cheaper than their estimate, so the planner tries them
    when they could beat its plan, sees their real cost, and settles.

    Args:
        table: error table of the calibration run.
        c: exploration constant (UCB1's 2; 0 plans on the running means, no optimism).
        prior_sigma: spread of the log-ratios assumed before enough observations exist.

    Raises:
        ValueError: for c < 0 or ``prior_sigma`` <= 0 (NaN included).
    """

    def __init__(self, table: torch.Tensor, c: float = 2.0, prior_sigma: float = 0.5):
        if not c >= 0:
            raise ValueError(f"exploration constant must be >= 0, got {c}")
        if not prior_sigma > 0:
            raise ValueError(f"prior_sigma must be > 0, got {prior_sigma}")
        self.table = table.to(torch.float64)
        self.c, self.prior_sigma = float(c), float(prior_sigma)
        self.counts = torch.ones(table.shape[:-1], dtype=torch.float64)  # calibration = one look
        self.log_sums = torch.zeros(table.shape[:-1], dtype=torch.float64)
        self.log_sq_sums = torch.zeros(table.shape[:-1], dtype=torch.float64)
        self.runs = 1

    def observe(self, state: tuple[int, ...], lead: int, error: float) -> None:
        """Record the error seen at ``lead`` steps past state (k, g_1..g_p).

        An observation with a zero error, or whose table entry is 0 or +inf, teaches nothing
        (there is no ratio) and is dropped.

        Raises:
            ValueError: for a negative or non-finite error.
            IndexError: for a state or lead outside the table.
        """
        prior = float(self.table[state + (lead,)])
        if not (math.isfinite(error) and error >= 0):
            raise ValueError(f"observed error must be finite and >= 0, got {error}")
        if not (math.isfinite(prior) and prior > 0 and error > 0):
            return  # no ratio to learn from (an exact prior or an exact extrapolation)
        lr = math.log(error / prior)
        self.counts[state] += 1
        self.log_sums[state] += lr
        self.log_sq_sums[state] += lr * lr

    def end_run(self) -> None:
        """Count one more run, N += 1 (after its observations): N enters the bonus's ln N."""
        self.runs += 1

    def sigma(self) -> float:
        """Pooled standard deviation of the log-ratios within states."""
        dof = float((self.counts - 1).sum())
        if dof < 10:
            return self.prior_sigma
        ss = float((self.log_sq_sums - self.log_sums.square() / self.counts).sum())
        return math.sqrt(max(ss, 0.0) / dof)

    def estimate(self, optimistic: bool = True) -> torch.Tensor:
        """The table scaled per state by the running mean ratio, lowered by the bonus if optimistic."""
        log_scale = self.log_sums / self.counts
        if optimistic and self.c > 0:
            log_scale = log_scale - self.sigma() * torch.sqrt(self.c * math.log(max(self.runs, 2)) / self.counts)
        return self.table * torch.exp(log_scale)[..., None]

    def state_dict(self) -> dict:
        """Plain JSON-able statistics: ``runs`` (N), and per state ``counts`` (n(s)), ``log_sums``
        and ``log_sq_sums`` of the log-ratios, as nested lists of the table's shape without its
        lead axis. The table and the hyperparameters are not included."""
        return {"runs": self.runs, "counts": self.counts.tolist(), "log_sums": self.log_sums.tolist(),
                "log_sq_sums": self.log_sq_sums.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Restore statistics (hyperparameters stay the constructor's).

        Raises:
            ValueError: for a shape mismatch, non-finite sums, counts < 1 or bad ``runs`` (or, from
                ``torch.tensor``, ragged lists or strings).
            KeyError: for a missing ``runs``, ``counts``, ``log_sums`` or ``log_sq_sums``.
            TypeError: for a state that is not a dict, or entries that are not numbers (from
                ``torch.tensor``).
        """
        stats = [torch.tensor(state[key], dtype=torch.float64) for key in ("counts", "log_sums", "log_sq_sums")]
        if any(x.shape != self.counts.shape for x in stats):
            raise ValueError(f"planning-bandit statistics must have shape {tuple(self.counts.shape)}")
        counts, log_sums, log_sq_sums = stats
        if not (torch.isfinite(log_sums).all() and torch.isfinite(log_sq_sums).all() and (counts >= 1).all()):
            raise ValueError("planning-bandit statistics must be finite with counts >= 1")
        if isinstance(state["runs"], bool) or not isinstance(state["runs"], int) or state["runs"] < 1:
            raise ValueError(f"planning-bandit 'runs' must be an int >= 1, got {state['runs']!r}")
        self.counts, self.log_sums, self.log_sq_sums, self.runs = counts, log_sums, log_sq_sums, state["runs"]


BANDITS = {"ucb1": UCB1, "epsilon-greedy": EpsilonGreedy, "thompson": GaussianThompson}


def make_bandit(kind: str, n_arms: int, **hyper) -> Bandit:
    """Build a bandit by registry name (``BANDITS`` keys) with ``n_arms`` arms and hyperparameters
    ``hyper`` (``c`` for UCB1, ``epsilon`` for epsilon-greedy, ``prior_var`` for Thompson).

    Raises:
        ValueError: for an unknown ``kind`` (listing the known ones), or a bad ``n_arms`` or
            hyperparameter value (the bandit's constructor).
        TypeError: for a hyperparameter the bandit does not take.
    """
    if kind not in BANDITS:
        raise ValueError(f"unknown bandit '{kind}', choose from {sorted(BANDITS)}")
    return BANDITS[kind](n_arms, **hyper)
