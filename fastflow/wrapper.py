"""FastFlow for a sampling loop you do not own: wrap the model, keep the loop.

``SkipWrapper(model, calls=K)`` is an ``nn.Module`` that stands in for ``model`` inside any
existing loop (a ``diffusers`` pipeline, our samplers, your own code). Each ``forward`` either
calls the model or returns an extrapolation of its earlier outputs, and an unchanged loop makes
fewer model calls:

* **Generations.** The wrapper reads the timestep of every call. Calls with the timestep of
  the previous call are further branches of the same step (classifier-free guidance run as two
  calls); a new timestep is the next step; a timestep that moves back against the direction of
  the steps starts a new generation. ``reset()`` ends a generation explicitly.
* **Calibration.** The first generation calls the model on every step and records its outputs
  (all branches of a step, concatenated) and timesteps. When it ends, the error table of every
  possible skip is built (``fastflow.errors``, step j weighted by its length in timestep units,
  the last step taking the length of the one before) and a FastFlow policy is chosen exactly as
  ``FastFlowSampler`` does (``calls=K`` or ``tolerance=tau``; ``policy="plan"``, ``"bandit"`` or
  ``"paper"``).
* **Later generations.** Step k is real or skipped as the policy decides; on a skipped step every
  branch gets the order-p polynomial through its own last p + 1 real outputs, evaluated at the
  step's timestep (extrapolation is unchanged by an affine change of time, so it works in the
  model's own units: sigma, 1000 sigma or our t). Learning policies are updated when the
  generation ends, from the error of branch 0 at each real step that ends a run of skips.

Extrapolated outputs keep the structure of the model's output (a tensor, a tuple whose first item
is the prediction, or an object with ``.sample``). Attributes the wrapper lacks (``config``,
``dtype``, ...) are read from the model. Reading the timestep is one host read per call when it is
a device tensor (counted in ``host_reads``).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .adapters import first_tensor
from .errors import TableRecorder, relative_error
from .extrapolate import History, check_order
from .fastflow import DEFAULT_MAX_RUN, POLICIES, FastFlowSampler
from .policy import Observation

__all__ = ["SkipWrapper"]

TIME_KEYWORDS = ("timestep", "t", "timesteps", "sigma")


def _rebuilder(out: Any) -> Callable[[torch.Tensor], Any]:
    """A function putting a new prediction where ``first_tensor`` found it in ``out``."""
    if isinstance(out, torch.Tensor):
        return lambda v: v
    if isinstance(out, (tuple, list)):
        rest = tuple(out[1:])
        return lambda v: type(out)((v, *rest))
    if dataclasses.is_dataclass(out):
        return lambda v: dataclasses.replace(out, sample=v)

    def rebuild(v):
        new = copy.copy(out)
        new.sample = v
        return new
    return rebuild


@dataclass
class _Generation:
    """State of one pass of the loop over the steps."""

    calibrating: bool
    k: int = -1                                   # current step
    tau: Optional[float] = None                   # its timestep
    branch: int = 0                               # call number within the step
    taus: list = field(default_factory=list)
    real: bool = True                             # whether the current step calls the model
    remaining: int = 0                            # skips left in the current run
    histories: dict = field(default_factory=dict)     # branch -> History
    rebuild: dict = field(default_factory=dict)       # branch -> output rebuilder
    shapes: dict = field(default_factory=dict)        # branch -> output shape
    outputs: list = field(default_factory=list)       # calibration: per step, flattened branch outputs
    reals: list = field(default_factory=list)
    skipped_steps: list = field(default_factory=list)
    pending: Optional[tuple] = None
    observed: list = field(default_factory=list)
    model_calls: int = 0
    skipped_calls: int = 0


class SkipWrapper(nn.Module):
    """Wrap ``model`` so that an unchanged sampling loop skips calls as FastFlow plans them.

    Args:
        model: the network (any callable; an ``nn.Module`` becomes a submodule).
        calls: real steps per generation after calibration (K); or give ``tolerance``; neither
            means ``FastFlowSampler``'s default tolerance.
        tolerance, policy, order, max_run, explore: as for ``FastFlowSampler``.
        time_arg: where the timestep is: a keyword name, a positional index, or None to look for
            the keywords ``timestep``, ``t``, ``timesteps``, ``sigma`` and then position 1.

    Attributes:
        model_calls, skipped_calls: totals over all generations (branches counted separately).
        host_reads: timestep reads that needed the device, plus one per learning update.
        last_generation: dict for the last finished generation: ``steps``, ``skipped_steps``,
            ``model_calls``, ``skipped_calls``, ``calibration``.
        sampler: the calibrated ``FastFlowSampler`` holding the table and the policy (None before).

    Time: the wrapper works in the model's own timestep units (sigma, 1000 sigma, or our t with
    t = 0 noise and t = 1 data) and in either direction; it only needs the timestep to move
    monotonically within a generation.

    Raises:
        TypeError: for a ``model`` that is not callable, or a ``time_arg`` that is neither a
            keyword name nor a position.
        ValueError: for an unknown ``policy``, both ``calls`` and ``tolerance``, or an ``order``
            that is not an int >= 1. The other settings (``calls``, ``tolerance``, ``max_run``,
            ``explore``) are checked by ``FastFlowSampler`` when the calibration generation ends:
            a bad one raises ValueError then, from ``forward`` or ``reset`` (see ``forward``).
    """

    def __init__(self, model: Callable[..., Any], calls: Optional[int] = None, tolerance: Optional[float] = None,
                 policy: str = "plan", order: int = 1, max_run: Optional[int] = None, explore: float = 0.5,
                 time_arg: Union[str, int, None] = None):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}, choose from {list(POLICIES)}")
        if calls is not None and tolerance is not None:
            raise ValueError("give calls or tolerance, not both")
        if time_arg is not None and not isinstance(time_arg, (str, int)):
            raise TypeError(f"time_arg must be a keyword name or a position, got {type(time_arg).__name__}")
        self.model = model
        self.options = dict(calls=calls, tolerance=tolerance, policy=policy, order=check_order(order),
                            max_run=DEFAULT_MAX_RUN if max_run is None else max_run, explore=explore)
        self.order, self.time_arg = self.options["order"], time_arg
        self.sampler: Optional[FastFlowSampler] = None
        self.times: Optional[list] = None
        self.weights: Optional[list] = None
        self.direction = 0.0
        self.model_calls = self.skipped_calls = self.host_reads = 0
        self.last_generation: Optional[dict] = None
        self._gen: Optional[_Generation] = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    # -- the public controls ---------------------------------------------------------

    @property
    def calibrated(self) -> bool:
        """Whether a calibration generation has ended (``sampler`` is set)."""
        return self.sampler is not None

    @property
    def steps(self) -> Optional[int]:
        """T, the number of steps of the calibration generation (None before)."""
        return self.sampler.steps if self.sampler is not None else None

    def reset(self) -> None:
        """End the current generation now (finishing calibration or updating the policy).

        Raises:
            ValueError: when the generation ending is the calibration one and has fewer than
                order + 3 steps, its settings are refused by ``FastFlowSampler`` (``calls``,
                ``tolerance``, ``max_run``, ``explore``), or its table has NaN entries; the
                wrapper stays uncalibrated then.
        """
        gen, self._gen = self._gen, None
        if gen is not None and gen.k >= 0:
            self._finish(gen)

    def recalibrate(self) -> None:
        """Forget the calibration: the next generation calls the model on every step again."""
        self._gen, self.sampler, self.times, self.weights, self.direction = None, None, None, None, 0.0

    def schedule(self) -> list[int]:
        """The steps the policy skips now (after calibration).

        Raises:
            ValueError: before the calibration generation has ended.
        """
        if self.sampler is None:
            raise ValueError("no schedule before the calibration generation has ended (call reset() after it)")
        return self.sampler.schedule()

    # -- forward ---------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        """Stand in for ``model(*args, **kwargs)``: call the model on a real step, or return the
        extrapolation of this branch's last p + 1 real outputs at this call's timestep on a
        skipped step, in the structure of the model's output.

        A timestep that moves back against the direction of the steps first ends the current
        generation (as ``reset``) and starts a new one.

        Raises:
            ValueError: for a timestep that cannot be found (no such keyword, no such position)
                or is not a number, a 0-d tensor or a (batch,) tensor of one value; an output whose
                shape differs from that branch's earlier outputs; a generation with more steps than
                the calibrated one; or, when this call ends the calibration generation, what
                ``reset`` raises.
            TypeError: for a model output that is not a tensor, a tuple or list starting with one,
                or an object with a ``.sample`` tensor (``fastflow.adapters.first_tensor``).
            Whatever the model raises, unchanged.
        """
        tau = self._timestep(args, kwargs)
        gen = self._gen
        if gen is not None and gen.tau is not None and tau != gen.tau and self._goes_back(gen, tau):
            self.reset()
            gen = None
        if gen is None:
            gen = self._gen = _Generation(calibrating=self.sampler is None)
        if tau == gen.tau:
            gen.branch += 1
        else:
            gen.k, gen.tau, gen.branch = gen.k + 1, tau, 0
            gen.taus.append(tau)
            self._begin_step(gen)
        return self._call(gen, args, kwargs)

    def _timestep(self, args, kwargs) -> float:
        where = self.time_arg
        if where is None:
            where = next((key for key in TIME_KEYWORDS if key in kwargs), 1)
        if isinstance(where, str):
            if where not in kwargs:
                raise ValueError(f"the model was called without the timestep keyword {where!r}")
            t = kwargs[where]
        else:
            if len(args) <= where:
                raise ValueError(f"cannot find the timestep: no keyword among {TIME_KEYWORDS} and no "
                                 f"positional argument {where}; pass time_arg=")
            t = args[where]
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return float(t)
        if not isinstance(t, torch.Tensor) or t.dim() > 1 or t.numel() == 0:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"timestep must be a number, a 0-d tensor or a (batch,) tensor, got {shape}")
        self.host_reads += t.device.type != "cpu"
        lo, hi = torch.stack([t.min(), t.max()]).tolist() if t.dim() else (float(t),) * 2
        if lo != hi:
            raise ValueError(f"timestep must be the same for the whole batch to skip a step, got {lo} .. {hi}")
        return float(lo)

    def _goes_back(self, gen: _Generation, tau: float) -> bool:
        direction = self.direction or (math.copysign(1.0, gen.taus[1] - gen.taus[0]) if len(gen.taus) > 1 else 0.0)
        return direction != 0.0 and (tau - gen.tau) * direction < 0

    def _begin_step(self, gen: _Generation) -> None:
        if gen.calibrating:
            gen.outputs.append([])
            return
        if gen.k >= self.steps:
            raise ValueError(f"this generation has more than the {self.steps} steps of the calibration run; "
                             f"call recalibrate() when the loop changes")
        gen.real = gen.remaining == 0
        if not gen.real:
            gen.remaining -= 1
            gen.skipped_steps.append(gen.k)

    def _call(self, gen: _Generation, args, kwargs):
        b, tau, p = gen.branch, gen.tau, self.order
        history = gen.histories.setdefault(b, History(p + 1))
        if not gen.real and len(history) >= p + 1:
            gen.skipped_calls += 1
            self.skipped_calls += 1
            return gen.rebuild[b](history.extrapolate(tau, p))
        out = self.model(*args, **kwargs)
        gen.model_calls += 1
        self.model_calls += 1
        v = first_tensor(out).detach()
        if gen.shapes.setdefault(b, v.shape) != v.shape:
            raise ValueError(f"model output changed shape from {tuple(gen.shapes[b])} to {tuple(v.shape)} "
                             f"(step {gen.k}, call {b + 1} of the step)")
        gen.rebuild[b] = _rebuilder(out)
        if gen.calibrating:
            gen.outputs[gen.k].append(v.reshape(-1))
        elif gen.real and b == 0 and gen.pending is not None:  # the real step ending a run of skips
            decided, gaps, m = gen.pending
            e = relative_error(history.extrapolate(tau, p), v) * self.weights[gen.k]
            gen.observed.append((decided, gaps, m + 1, e))
            gen.pending = None
        history.append(tau, v)
        if not gen.calibrating and gen.real and b == 0:
            gen.reals.append(gen.k)
            T, policy = self.steps, self.sampler.policy
            if p <= gen.k < T - 1:
                m = policy.run_length(gen.k, T - 2 - gen.k)
                if policy.observes:
                    r = gen.reals
                    gen.pending = (gen.k, tuple(r[-1 - i] - r[-2 - i] for i in range(p)), m)
                gen.remaining = m
        return out

    # -- end of a generation ---------------------------------------------------------

    def _finish(self, gen: _Generation) -> None:
        steps = gen.k + 1
        if gen.calibrating:
            self._calibrate(gen)
        elif gen.observed or self.sampler.policy.observes:
            errors = torch.stack([e for *_, e in gen.observed]).tolist() if gen.observed else []
            self.host_reads += bool(gen.observed)
            obs = [Observation(k, g, lead, float(e)) for (k, g, lead, _), e in zip(gen.observed, errors)]
            self.sampler.policy.update(obs, steps - len(gen.skipped_steps))
        self.last_generation = {"steps": steps, "skipped_steps": list(gen.skipped_steps),
                                "model_calls": gen.model_calls, "skipped_calls": gen.skipped_calls,
                                "calibration": gen.calibrating}

    def _calibrate(self, gen: _Generation) -> None:
        T, p, o = gen.k + 1, self.order, self.options
        if T < p + 3:
            raise ValueError(f"the calibration generation had {T} steps; order {p} needs at least {p + 3}")
        taus = gen.taus
        lengths = [abs(b - a) for a, b in zip(taus, taus[1:])]
        lengths.append(lengths[-1])
        weights = [T * d / sum(lengths) for d in lengths]
        paper = o["policy"] == "paper"  # its runs are its arms (0..4)
        sampler = FastFlowSampler(T, calls=o["calls"], tolerance=o["tolerance"], policy=o["policy"], order=p,
                                  max_run=None if paper else min(o["max_run"], T - 2), explore=o["explore"])
        rec = TableRecorder(taus, p, sampler.max_run, weights=weights)
        for j in range(T):
            rec.add(j, torch.cat(gen.outputs[j]))
        sampler._calibrate(rec.table(), rec.euler_errors())
        self.host_reads += 2  # the table and Euler's error estimates
        self.sampler, self.times, self.weights = sampler, list(taus), weights
        self.direction = math.copysign(1.0, taus[1] - taus[0])

    def extra_repr(self) -> str:
        """The settings given and whether (and on how many steps) the wrapper is calibrated, for
        ``nn.Module``'s repr."""
        state = f"calibrated on {self.steps} steps" if self.calibrated else "not calibrated"
        knobs = ", ".join(f"{k}={v}" for k, v in self.options.items() if v is not None)
        return f"{knobs}; {state}"
