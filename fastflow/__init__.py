"""FastFlow in pure PyTorch: fast samplers for flow-matching models.

Time convention everywhere: t in [0, 1], t = 0 is noise, t = 1 is data,
x_t = (1 - t) * noise + t * data, v = data - noise, and samplers integrate
dx/dt = v(x, t) on the uniform grid t_k = k / T (``steps=T``) or on any strictly monotone grid
inside [0, 1] (``times=``, see ``fastflow.grids``): from noise to data, from t0 > 0 (partial
generation) or back towards noise (inversion).

The top level holds the samplers (and ``SAMPLERS``, their registry), ``SampleResult``,
``SkipWrapper`` and ``adapt`` for loops and models of your own, the skip policies' specs
(``Plan``, ``PlanningBandit``, ``PaperBandit``), ``plan_skips`` and ``grids``. The rest lives in
namespaces: ``fastflow.plan`` (optimal plans), ``fastflow.policy`` (live policies),
``fastflow.bandit``, ``fastflow.errors`` (error tables), ``fastflow.extrapolate``,
``fastflow.controller`` (the skip engine), ``fastflow.persist`` (calibration records and states),
``fastflow.checks``, ``fastflow.metrics``, ``fastflow.toy``, ``fastflow.distributed``,
``fastflow.adapters``, ``fastflow.caching`` (TeaCache, TaylorSeer, static schedules),
``fastflow.editing`` (partial generation, inversion, FlowEdit), ``fastflow.choice`` (the best
sampler for a budget of K calls, chosen by replay; ``make_sampler("best", calls=K)``), ``fastflow.optgrid``
(time grids cut by dynamic programming) and ``fastflow.gridrefine`` (time grids tuned by replays).
"""
__version__ = "0.2.0"

from . import (adapters, bandit, caching, checks, choice, controller, distributed, editing, errors, extrapolate,
               gridrefine, grids, metrics, optgrid, persist, plan, policy, specs, toy)
from .adapters import adapt
from .caching import TaylorSeerSampler, TeaCacheSampler
from .fastflow import ExtrapolatedEulerSampler, FastFlowSampler, extrapolated_euler
from .flowturbo import FlowTurboSampler
from .plan import plan_skips
from .registry import SAMPLERS, make_sampler
from .result import SampleResult
from .solvers import AdamsBashforthSampler, EulerSampler, HeunSampler, Sampler
from .specs import PaperBandit, Plan, PlanningBandit
from .unipc import UniPCSampler
from .wrapper import SkipWrapper

__all__ = [
    "__version__", "Sampler", "EulerSampler", "HeunSampler", "AdamsBashforthSampler", "ExtrapolatedEulerSampler",
    "FastFlowSampler", "FlowTurboSampler", "TeaCacheSampler", "TaylorSeerSampler", "extrapolated_euler",
    "SAMPLERS", "make_sampler", "SampleResult", "SkipWrapper", "adapt", "Plan", "PlanningBandit", "PaperBandit",
    "plan_skips", "grids", "UniPCSampler",
]
