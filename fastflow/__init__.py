"""FastFlow in pure PyTorch: fast samplers for flow-matching models.

Time convention everywhere: t in [0, 1], t = 0 is noise, t = 1 is data,
x_t = (1 - t) * noise + t * data, v = data - noise, and samplers integrate
dx/dt = v(x, t) from 0 to 1 on the uniform grid t_k = k / T (``steps=T``) or on any
increasing grid from 0 to 1 (``times=``, see ``fastflow.grids``).
"""
__version__ = "0.2.0"

from . import adapters, distributed, grids, metrics, toy
from .caching import TaylorSeerSampler, TeaCacheSampler, static_skip_schedule
from .bandit import BANDITS, EpsilonGreedy, ErrorTableUCB, GaussianThompson, UCB1, make_bandit
from .extrapolate import History, newton_extrapolate
from .errors import TableRecorder, error_table, relative_error
from .controller import DEFAULT_MAX_RUN, DEFAULT_TOLERANCE, POLICIES, SkipController, SkipRun
from .fastflow import ExtrapolatedEulerSampler, FastFlowSampler, extrapolated_euler
from .plan import min_calls, plan_cost, plan_skips, planned_costs
from .policy import PaperBanditPolicy, PlanningBanditPolicy, PlanPolicy
from .field import VelocityField
from .flowturbo import FlowTurboSampler
from .result import SampleResult
from .solvers import AdamsBashforthSampler, EulerSampler, HeunSampler, Sampler
from .wrapper import SkipWrapper
from .adapters import adapt
from .distributed import sample_round

SAMPLERS = {
    "euler": EulerSampler,
    "heun": HeunSampler,
    "ab2": AdamsBashforthSampler,
    "fastflow": FastFlowSampler,
    "teacache": TeaCacheSampler,
    "taylorseer": TaylorSeerSampler,
}

__all__ = [
    "__version__", "SampleResult", "VelocityField", "Sampler", "EulerSampler", "HeunSampler", "AdamsBashforthSampler",
    "ExtrapolatedEulerSampler", "FlowTurboSampler", "extrapolated_euler", "FastFlowSampler", "History", "newton_extrapolate",
    "TeaCacheSampler", "TaylorSeerSampler", "static_skip_schedule",
    "UCB1", "EpsilonGreedy", "GaussianThompson", "BANDITS", "make_bandit", "ErrorTableUCB", "SAMPLERS", "toy",
    "metrics", "plan_skips", "planned_costs", "plan_cost", "min_calls", "error_table", "relative_error",
    "TableRecorder", "grids", "adapters", "adapt", "distributed", "sample_round", "SkipWrapper", "PlanPolicy", "PlanningBanditPolicy", "PaperBanditPolicy", "POLICIES", "DEFAULT_TOLERANCE", "DEFAULT_MAX_RUN",
]
