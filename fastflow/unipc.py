"""UniPC: a unified predictor-corrector multistep sampler on the model's data prediction.

After Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models" (NeurIPS 2023), written for rectified flow in this project's time convention: t = 0 noise,
t = 1 data, x_t = (1 - t) noise + t data, v = data - noise. With alpha_t = t and sigma_t = 1 - t the
half log signal-to-noise ratio is lambda_t = log(alpha_t / sigma_t) = log(t / (1 - t)), increasing
towards data, and the data prediction is D = x + (1 - t) v.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from . import checks
from .grids import Grid
from .solvers import Sampler

__all__ = ["UniPCSampler", "UniPCStep", "unipc_steps"]

SOLVERS = ("bh1", "bh2")  # B(h) = h, or e^h - 1 (the paper's B_1 and B_2, in the sign of -h below)
ORDERS = (1, 2, 3)


def log_snr(t: float) -> float:
    """lambda_t = log(t / (1 - t)): -inf at t = 0 (noise), +inf at t = 1 (data).

    Raises:
        Nothing (t is a grid point inside [0, 1]).
    """
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


def phi_gaps(z: float, n: int) -> list[float]:
    """g_i(z) = i! phi_i(z) - 1 for i = 1..n, where phi_i(z) = sum_{m >= 0} z^m / (m + i)!.

    These are the right-hand sides of UniPC's order conditions, i! z phi_{i+1}(z), at z = -h <= 0.
    A series for |z| < 1 (the closed forms cancel there), the recursion phi_i = (phi_{i-1} - 1 / (i-1)!) / z
    from phi_0 = e^z elsewhere; at z = -inf (a step from t = 0 or to t = 1) every g_i is -1.

    Raises:
        Nothing.
    """
    if z == -math.inf:
        return [-1.0] * n
    if abs(z) < 1.0:
        out = []
        for i in range(1, n + 1):
            term, total, m = 1.0, 0.0, 0  # term = i! z^m / (m + i)!
            while True:
                m += 1
                term *= z / (m + i)
                total += term
                if abs(term) < 1e-18:
                    break
            out.append(total)
        return out
    phi, out, fact = math.exp(z), [], 1.0
    for i in range(1, n + 1):
        phi = (phi - 1.0 / fact) / z
        fact *= i
        out.append(fact * phi - 1.0)
    return out


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """The solution of a small dense linear system (float64).

    Raises:
        RuntimeError: for a singular system (repeated grid points, refused earlier by the grid check).
    """
    a = torch.tensor(matrix, dtype=torch.float64)
    b = torch.tensor(rhs, dtype=torch.float64)
    return torch.linalg.solve(a, b).tolist()


@dataclass(frozen=True)
class UniPCStep:
    """The coefficients of step k, from t_k to t_{k+1}, as data.

    predictor: x_{k+1} = scale * x_k + sum_j predictor[j] * D_{k-j}, j = 0..order-1.
    corrector: x_{k+1}^c = scale * x_k + sum_j corrector[j] * D_{k+1-j}, j = 0..order (its first weight
    is on the new output D_{k+1}); empty where the step is not corrected.

    Raises:
        Nothing.
    """

    order: int
    scale: float
    predictor: tuple[float, ...]
    corrector: tuple[float, ...]


def unipc_steps(times: Sequence[float], order: int, corrector: bool = True, solver: str = "bh2",
                lower_order_final: bool = True) -> list[UniPCStep]:
    """The coefficients of every step of UniPC-``order`` on an increasing grid (see ``UniPCSampler``).

    Args:
        times: the grid t_0 < ... < t_T inside [0, 1], as floats.
        order: p, 1..3; each step's own order (warm-up, ``lower_order_final``, a step to t = 1)
            is in ``UniPCStep.order``.
        corrector: give every step but the last its UniC weights.
        solver: "bh1" or "bh2", the choice of B(h).
        lower_order_final: order at most T - k at step k.

    Returns:
        T ``UniPCStep``, one per step, in float64.

    Raises:
        ValueError: for solver 'bh1' with a corrected step from t = 0, where B(h) = -h is infinite.
    """
    t, lam = list(times), [log_snr(s) for s in times]
    T = len(t) - 1
    first = 1 if t[0] == 0.0 else 0  # the output at lambda = -inf never enters a difference
    steps = []
    for k in range(T):
        s, u = t[k], t[k + 1]
        p = min(order, 1 + max(0, k - first))  # warm-up: k - first earlier outputs can be nodes
        if lower_order_final:
            p = min(p, T - k)
        if u == 1.0:
            p = 1  # lambda_{T} = inf: no polynomial in lambda reaches it, the step is D_{T-1}
        h = lam[k + 1] - lam[k]
        q = 0.0 if s == 0.0 or u == 1.0 else math.exp(-h)  # e^{-h} = s (1 - u) / (u (1 - s))
        z = -h
        big_b = z if solver == "bh1" else q - 1.0  # B(h), in the sign of z = -h
        scale = (1.0 - u) / (1.0 - s)               # sigma_{k+1} / sigma_k
        base = (u - s) / (1.0 - s)                  # alpha_{k+1} (1 - e^{-h})
        corrected = corrector and k < T - 1
        if math.isinf(big_b) and (p > 1 or corrected):
            raise ValueError(f"solver 'bh1' has B(h) = -h infinite on the step from t = {s} to t = {u}; "
                             f"use solver='bh2', or a grid strictly inside (0, 1)")
        r = [(lam[k - j] - lam[k]) / h for j in range(1, p)]   # earlier outputs, in units of h (< 0)
        g = phi_gaps(z, p)
        b = [gi / big_b for gi in g] if p > 1 or corrected else []  # order conditions sum_j rho_j r_j^{i-1} = b_i
        # predictor: x = scale x_k + base D_k - u B sum_j rho_j (D_{k-j} - D_k) / r_j
        if p == 1:
            rho = []
        elif p == 2:
            rho = [0.5]  # the paper's (and diffusers') choice for UniP-2: exact to the order, for any B(h)
        else:
            rho = _solve([[rj ** i for rj in r] for i in range(p - 1)], b[:p - 1])
        w = [-u * big_b * rho_j / r[j] for j, rho_j in enumerate(rho)]
        pred = (base - sum(w),) + tuple(w)
        corr = ()
        if corrected:  # the same step, with the new output D_{k+1} at r = 1 as one more node
            nodes = r + [1.0]
            if p == 1:
                rc = [0.5]
            else:
                rc = _solve([[rj ** i for rj in nodes] for i in range(p)], b[:p])
            wc = [-u * big_b * rho_j / nodes[j] for j, rho_j in enumerate(rc)]  # on D_{k-1}, ..., then D_{k+1}
            corr = (wc[-1], base - sum(wc)) + tuple(wc[:-1])
        steps.append(UniPCStep(p, scale, pred, corr))
    return steps


@dataclass
class _Run:
    """One run's memory: the last data predictions (newest first) and the state the last step left from."""

    outputs: deque
    x_prev: Optional[torch.Tensor] = None


class UniPCSampler(Sampler):
    r"""UniPC (Zhao et al. 2023): multistep predictor UniP-p with the corrector UniC-p, on the data
    prediction, one model call per step (T in all), orders p = 1, 2, 3.

    Time convention: t = 0 noise, t = 1 data, x_t = (1 - t) noise + t data, v = data - noise; any
    strictly increasing grid inside [0, 1] (``fastflow.grids``). With alpha_t = t, sigma_t = 1 - t,
    lambda_t = log(alpha_t / sigma_t) = log(t / (1 - t)) and the data prediction D_j = x_j + (1 - t_j) v_j,
    the exact solution over step k, of length h = lambda_{k+1} - lambda_k in lambda, is

        x_{k+1} = (sigma_{k+1} / sigma_k) x_k + sigma_{k+1} int_{lambda_k}^{lambda_{k+1}} e^lambda D(lambda) dlambda.

    **Predictor** (UniP-p) replaces D by its interpolant through D_k, ..., D_{k-p+1}:

        x_{k+1} = (sigma_{k+1} / sigma_k) x_k + alpha_{k+1} (1 - e^{-h}) D_k
                  - alpha_{k+1} B(h) sum_{j<p} rho_j (D_{k-j} - D_k) / r_j,   r_j = (lambda_{k-j} - lambda_k) / h,

    with sum_j rho_j r_j^{i-1} = g_i(-h) / B(h) for i = 1..p-1, g_i(z) = i! phi_i(z) - 1 (``phi_gaps``), and
    rho = 1/2 for p = 2. Here (sigma_{k+1} / sigma_k) = (1 - t_{k+1}) / (1 - t_k) and
    alpha_{k+1} (1 - e^{-h}) = (t_{k+1} - t_k) / (1 - t_k): **UniP-1 is Euler**, x_k + dt_k v_k.

    **Corrector** (UniC-p): the model output D_{k+1} at the predicted x_{k+1}, which the next step
    needs anyway, joins as a node at r = 1 and the same step is taken again from x_k with p
    conditions (rho = 1/2 for p = 1): the corrected x_{k+1} starts step k + 1, at no extra call.
    It raises the order of the step by one; the last step, after which no output comes, is not
    corrected. B(h) = e^{-h} - 1 (``solver="bh2"``) or -h (``"bh1"``) only matters where rho is fixed
    (where it is solved for, B(h) rho does not depend on B).

    **Lower order** where the outputs are lacking or the steps are too long: order
    min(p, k + 1) at step k (warm-up; one step later if t_0 = 0, whose lambda = -inf is no node
    of any interpolant), and with ``lower_order_final`` min(p, T - k) as diffusers does. A step to
    t = 1 (lambda = inf) is always first order: it lands on D_{T-1}.

    **Orders** (global, measured on the toy flows, ``tests/test_unipc.py``): on a grid that stops
    short of t = 1, with ``lower_order_final=False``, UniP-p alone is of order p for p = 1, 2 and
    UniPC-p of order p + 1; the first step, first order for want of earlier outputs, caps UniP-3 at
    2 and UniPC-3 at 3 asymptotically. On a grid to t = 1 the last step, D_{T-1}, has a local
    error O(dt^2): every order converges at 2 there at best.

    The coefficients of every step are computed once, from the grid (``unipc_steps``), in float64.
    With ``prediction_type="flow_prediction", use_flow_sigmas=True`` diffusers'
    ``UniPCMultistepScheduler`` is this sampler on the grid t = 1 - sigma (its model output is -v).

    Args:
        steps: T, or an increasing (T + 1,) grid; or give ``times`` (see ``Sampler``).
        order: p, 1, 2 or 3 (the predictor's order; the corrector adds one).
        corrector: apply UniC after every step but the last.
        solver: "bh2" (default) or "bh1", the paper's B(h).
        lower_order_final: order at most T - k at step k (steady with few steps).

    ``SampleResult.info`` keys: ``host_reads`` (1 for the finiteness check, 0 with
    ``check=False``). A trace holds the predicted (uncorrected) states the model was called at.

    Raises:
        TypeError: for a grid given twice or not at all, or a ``steps`` that is not an int (see ``Sampler``).
        ValueError: for a bad grid (see ``Sampler``) or a decreasing one; an ``order`` outside 1, 2, 3;
            an unknown ``solver``; solver "bh1" with the corrector on a grid from t = 0.
    """

    keeps_outputs = True  # the last p data predictions, and the previous state for the corrector

    def __init__(self, steps: Optional[int] = None, order: int = 2, corrector: bool = True, solver: str = "bh2",
                 lower_order_final: bool = True, *, times: Optional[Grid] = None):
        super().__init__(steps, times=times)
        if not checks.is_int(order) or order not in ORDERS:
            raise ValueError(f"UniPC order must be one of {list(ORDERS)}, got {order!r}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown UniPC solver {solver!r}, choose from {list(SOLVERS)}")
        if not self.times[1] > self.times[0]:
            raise ValueError("UniPC integrates towards data only: times must increase (t = 0 noise, t = 1 data)")
        for name, flag in (("corrector", corrector), ("lower_order_final", lower_order_final)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self.order, self.corrector, self.solver, self.lower_order_final = order, corrector, solver, lower_order_final
        self.plan = unipc_steps(self.times.tolist(), order, corrector, solver, lower_order_final)

    def expected_calls(self) -> int:
        """Model calls per run: T, one per step (the corrector reuses the next step's call)."""
        return self.steps

    def start(self, field):
        """The run state: no outputs yet."""
        return _Run(deque(maxlen=self.order + 1))

    def step(self, field, run, k, x):
        """Call the model at the predicted x_k, correct x_k with its output (UniC, for k > 0), then
        predict x_{k+1} (UniP).

        Raises:
            ValueError: for a model output that is not a tensor of the shape of x (``VelocityField``).
        """
        d = x + (1.0 - field.t(k)) * field.at(k, x)  # the data prediction D_k
        run.outputs.appendleft(d)
        if k > 0 and self.plan[k - 1].corrector:
            x = self._combine(self.plan[k - 1].scale, run.x_prev, self.plan[k - 1].corrector, run.outputs)
        run.x_prev = x
        rule = self.plan[k]
        return self._combine(rule.scale, x, rule.predictor, run.outputs)

    @staticmethod
    def _combine(scale: float, x: torch.Tensor, weights: Sequence[float], outputs) -> torch.Tensor:
        """scale * x + sum_j weights[j] * outputs[j] (outputs newest first)."""
        out = scale * x
        for w, d in zip(weights, outputs):
            out = out + w * d
        return out

    def __repr__(self) -> str:
        return (f"UniPCSampler({self.grid_repr()}, order={self.order}, corrector={self.corrector}, "
                f"solver={self.solver!r}, lower_order_final={self.lower_order_final})")
