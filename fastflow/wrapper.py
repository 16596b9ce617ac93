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
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .adapters import first_tensor
from . import checks
from .controller import STATE_FORMAT, STATE_VERSION, SkipController, SkipRun, _weights
from .field import OutputGuard
from .persist import load_state_file
from .policy import PlanPolicy
from .specs import Plan, PolicySpec, policy_spec

__all__ = ["SkipWrapper"]

TIME_KEYWORDS = ("timestep", "t", "timesteps", "sigma")


def _rebuilder(out: Any) -> Callable[[torch.Tensor], Any]:
    """A function putting a new prediction where ``first_tensor`` found it in ``out``."""
    if isinstance(out, torch.Tensor):
        return lambda v: v
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a namedtuple: replace its first field
        return lambda v: out._replace(**{out._fields[0]: v})
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
    """State of one pass of the loop over the steps: what the wrapper itself tracks (timesteps,
    branches, output structure); the skip state lives in ``run`` (``fastflow.controller.SkipRun``)."""

    run: SkipRun
    k: int = -1                                   # current step
    tau: Optional[float] = None                   # its timestep
    branch: int = 0                               # call number within the step
    taus: list = field(default_factory=list)
    real: bool = True                             # whether the current step calls the model
    outputs: list = field(default_factory=list)   # the current real step's branch outputs
    predicted: Optional[list] = None              # the current skipped step's branch predictions
    rebuild: dict = field(default_factory=dict)   # branch -> output rebuilder
    shapes: dict = field(default_factory=dict)    # branch -> output shape
    model_calls: int = 0
    skipped_calls: int = 0
    branches: Optional[int] = None                # calls per step, set by the first step
    inputs: dict = field(default_factory=dict)    # branch -> shape of the call's first tensor argument
    thread: int = field(default_factory=threading.get_ident)
    guard: OutputGuard = field(default_factory=lambda: OutputGuard("the SkipWrapper"))


class SkipWrapper(nn.Module):
    """Wrap ``model`` so that an unchanged sampling loop skips calls as FastFlow plans them.

    Args:
        model: the network (any callable; an ``nn.Module`` becomes a submodule).
        calls: real steps per generation after calibration (K); or give ``tolerance``; neither
            means ``FastFlowSampler``'s default tolerance.
        tolerance, policy, order, max_run: as for ``FastFlowSampler`` (``policy``: a spec of
            ``fastflow.specs`` or its shorthand string).
        explore, **settings: a string policy's settings as flat keywords (``fastflow.specs.policy_spec``).
        time_arg: where the timestep is: a keyword name, a positional index, or None to look for
            the keywords ``timestep``, ``t``, ``timesteps``, ``sigma`` and then position 1.

    Attributes:
        model_calls, skipped_calls: totals over all generations (branches counted separately).
        host_reads: timestep reads that needed the device, plus one per calibration and per
            learning update.
        last_generation: dict for the last finished generation: ``steps``, ``skipped_steps``,
            ``model_calls``, ``skipped_calls``, ``calibration``.
        skips: the ``SkipController`` holding the table and the policy (None before calibration).

    Time: the wrapper works in the model's own timestep units (sigma, 1000 sigma, or our t with
    t = 0 noise and t = 1 data) and in either direction; it only needs the timestep to move
    monotonically within a generation. All branches of a step (e.g. the two halves of
    classifier-free guidance run as two calls) are one velocity to the engine: concatenated,
    they are recorded in the table, extrapolated and measured together.

    Raises:
        TypeError: for a ``model`` that is not callable, or a ``time_arg`` that is neither a
            keyword name nor a position.
        ValueError: before any model call, for an unknown ``policy`` or a setting of another
            policy, both ``calls`` and ``tolerance``, an ``order`` that is not an int in [1, 16], a
            ``calls`` below order + 2, a tolerance that is not a finite number > 0, or a bad
            ``max_run``. What depends on the loop's length (``calls`` at most T, ``min_calls``) is
            checked when the calibration generation ends: ValueError then, from ``forward`` or
            ``reset`` (see ``forward``).
    """

    def __init__(self, model: Callable[..., Any], calls: Optional[int] = None, tolerance: Optional[float] = None,
                 policy: "PolicySpec | str" = "plan", order: int = 1, max_run: Optional[int] = None,
                 explore: Optional[float] = None, time_arg: Union[str, int, None] = None, **settings):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if explore is not None:
            settings["explore"] = explore
        spec = policy_spec(policy, **settings)
        if calls is not None and tolerance is not None:
            raise ValueError("give calls or tolerance, not both")
        order = checks.order(order)
        if calls is not None:
            checks.int_in("calls", calls, order + 2)
        if tolerance is not None and checks.finite("tolerance", tolerance, what="a finite number > 0") <= 0:
            raise ValueError(f"tolerance must be a finite number > 0, got {tolerance!r}")
        self._table_runs = spec.run_limit(max_run, checks.MAX_STEPS)  # R of the calibration table; checks max_run
        if time_arg is not None and not isinstance(time_arg, (str, int)):
            raise TypeError(f"time_arg must be a keyword name or a position, got {type(time_arg).__name__}")
        self.model, self.spec = model, spec
        self.options = dict(calls=calls, tolerance=tolerance, order=order, max_run=max_run)
        self.order, self.time_arg = order, time_arg
        self.skips: Optional[SkipController] = None
        self.times: Optional[list] = None
        self.direction = 0.0
        self.model_calls = self.skipped_calls = self.host_reads = 0
        self.last_generation: Optional[dict] = None
        self._gen: Optional[_Generation] = None
        self._force_calibration = False

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        model = self.__dict__.get("model", self.__dict__.get("_modules", {}).get("model"))
        if model is None or name == "model":
            raise AttributeError(f"'SkipWrapper' object has no attribute {name!r}")
        try:
            return getattr(model, name)
        except AttributeError:
            raise AttributeError(f"neither the SkipWrapper nor its model ({type(model).__name__}) has an "
                                 f"attribute {name!r}") from None

    # -- the public controls ---------------------------------------------------------

    @property
    def calibrated(self) -> bool:
        """Whether a calibration generation has ended (``skips`` is set)."""
        return self.skips is not None

    @property
    def steps(self) -> Optional[int]:
        """T, the number of steps of the calibration generation (None before)."""
        return self.skips.steps if self.skips is not None else None

    def reset(self) -> None:
        """End the current generation now (finishing calibration or updating the policy).

        Raises:
            ValueError: when the generation ending is the calibration one and has fewer than
                order + 3 steps, its settings are refused by ``SkipController`` (``calls``,
                ``tolerance``, ``max_run``, ``explore``), or its table has NaN entries; the
                wrapper stays uncalibrated then.
        """
        gen, self._gen = self._gen, None
        if gen is not None and gen.k >= 0:
            self._finish(gen)

    def recalibrate(self) -> None:
        """Forget the calibration: the next generation calls the model on every step again."""
        self._gen, self.skips, self.times, self.direction = None, None, None, 0.0

    def calibrate(self, generate: Callable[..., Any], *args, **kwargs) -> Any:
        """Run one generation as the calibration one, explicitly: ``generate(*args, **kwargs)``
        (your loop or pipeline call) with every step real, then end it (``reset``), replacing any
        earlier calibration. Returns what ``generate`` returns.

        Raises:
            ValueError: as ``reset`` for a calibration generation (too few steps, bad settings,
                NaN table entries; an earlier calibration is then lost), or when ``generate``
                made no model call.
            Whatever ``generate`` raises (the generation is dropped).
        """
        self.reset()
        self._force_calibration = True
        try:
            out = generate(*args, **kwargs)
        except BaseException:
            self._gen = None
            raise
        finally:
            self._force_calibration = False
        if self._gen is None:
            raise ValueError("calibrate(): the generation made no call of the wrapped model")
        if not self._gen.run.calibrating:  # the loop started a second generation inside
            raise ValueError("calibrate(): the call ran more than one generation")
        self.skips = None
        self.reset()
        return out

    def schedule(self) -> list[int]:
        """The steps the policy skips now (after calibration).

        Raises:
            ValueError: before the calibration generation has ended.
        """
        if self.skips is None:
            raise ValueError("no schedule before the calibration generation has ended (call reset() after it)")
        return self.skips.schedule()

    def deferred_updates(self):
        """Generations inside this block all play the policy's state as it was when the block
        began; their updates are queued in the yielded list (``SkipController.deferred_updates``).

        Raises:
            ValueError: before calibration, or inside another such block.
        """
        self._need_calibration("deferred updates")
        return self.skips.deferred_updates()

    def apply_updates(self, updates) -> None:
        """Learn from finished generations' updates, in order, all or nothing
        (``SkipController.apply_updates``).

        Raises:
            ValueError: before calibration, or for a malformed or refused update.
        """
        self._need_calibration("apply_updates")
        self.skips.apply_updates(updates)

    def freeze(self) -> "SkipWrapper":
        """A new wrapper of the same model that plays the current schedule on every generation,
        learning nothing (the plan policy on this calibration).

        Raises:
            ValueError: before calibration.
        """
        self._need_calibration("freeze")
        skip, R = self.schedule(), self.skips.max_run
        frozen = SkipWrapper(self.model, order=self.order, max_run=R, time_arg=self.time_arg)
        frozen.skips = frozen._controller(self.steps, calls=self.steps - len(skip))
        frozen.skips.record, frozen.skips.weights = self.skips.record, self.skips.weights
        frozen.skips.calls_target = self.steps - len(skip)
        frozen.skips.policy = PlanPolicy(self.steps, skip, self.order)
        frozen.times, frozen.direction = list(self.times), self.direction
        return frozen

    # -- persistence -----------------------------------------------------------------

    def _grid(self) -> dict:
        return {"steps": self.steps, "timesteps": self.times, "wrapper": True}

    def state_dict(self) -> dict:
        """The wrapper's state as plain JSON-able data: the controller's (``SkipController.state_dict``)
        with the calibration generation's ``steps`` and ``timesteps``; ``{"calibrated": false}``
        before calibration."""
        if self.skips is None:
            return {"format": STATE_FORMAT, "version": STATE_VERSION, "wrapper": True, "calibrated": False}
        return self.skips.state_dict(self._grid())

    def load_state_dict(self, state: dict) -> None:
        """Restore a state written by ``state_dict`` (a calibrated one: no calibration generation
        needed after it); nothing changes unless all of it is valid.

        Raises:
            ValueError: naming the field, for a state of a sampler or of a wrapper with other
                settings, or any malformed value.
        """
        if not isinstance(state, dict) or state.get("wrapper") is not True:
            raise ValueError("not a SkipWrapper state (a FastFlowSampler's states load into a sampler)")
        if state.get("calibrated") is False:
            self.recalibrate()
            return
        steps, taus = state.get("steps"), state.get("timesteps")
        if not checks.is_int(steps) or not isinstance(taus, list) \
                or len(taus) != steps or not all(isinstance(t, (int, float)) and math.isfinite(t) for t in taus) \
                or len(set(taus)) != steps or steps < 2:
            raise ValueError("'steps' and 'timesteps' must give the calibration's distinct timesteps")
        skips = self._controller(steps)
        grid = {"steps": steps, "timesteps": taus, "wrapper": True}
        skips.load_state_dict(state, grid)
        self._install(skips, [float(t) for t in taus])

    def save_state(self, path, tag: Optional[str] = None) -> None:
        """Write ``state_dict()`` and ``tag`` (what the wrapper cannot see: model, guidance,
        resolution) as JSON, atomically; a new process loads it and skips from its first generation.

        Raises:
            ValueError: before calibration, or for a tag that is not a string or None.
            OSError: naming ``path`` when it cannot be written.
        """
        self._need_calibration("save_state")
        self.skips.save_state(path, self._grid(), tag)

    def load_state(self, path, tag: Optional[str] = None) -> None:
        """Load a state written by ``save_state``, refusing one saved with other settings or another tag.

        Raises:
            ValueError: naming the file, for a corrupt or mismatched file or another tag.
            OSError: when the file cannot be read.
        """
        load_state_file(path, tag, self.load_state_dict, who="wrapper")

    def _need_calibration(self, what: str) -> None:
        if self.skips is None:
            raise ValueError(f"{what} needs a calibration generation first (run the loop once, or calibrate())")

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
                shape differs from that branch's earlier outputs; a skipped step with more
                branches than the real steps before it; a generation with more steps than
                the calibrated one; or, when this call ends the calibration generation, what
                ``reset`` raises.
            TypeError: for a model output that is not a tensor, a tuple or list starting with one,
                or an object with a ``.sample`` tensor (``fastflow.adapters.first_tensor``).
            Whatever the model raises, unchanged.
        """
        tau = self._timestep(args, kwargs)
        gen = self._gen
        if gen is not None and gen.thread != threading.get_ident():
            raise RuntimeError("SkipWrapper is not thread-safe: a generation started in another thread is in "
                               "progress; use one wrapper per thread (or call reset() from the thread that ran it)")
        if gen is not None and gen.tau is not None and tau != gen.tau and self._goes_back(gen, tau):
            self.reset()
            gen = None
        if gen is None:
            calibrate = self.skips is None or self._force_calibration
            run = (SkipRun.calibration(self.order, self._table_runs) if calibrate else self.skips.begin())
            gen = self._gen = _Generation(run)
        if tau == gen.tau:
            gen.branch += 1
        else:
            self._end_step(gen)
            gen.k, gen.tau, gen.branch = gen.k + 1, tau, 0
            gen.taus.append(tau)
            if not gen.run.calibrating and gen.k >= self.steps:
                raise ValueError(f"this generation has more than the {self.steps} steps of the calibration run; "
                                 f"call recalibrate() when the loop changes")
            gen.real = not gen.run.skipping()
            gen.predicted = None
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
            if not math.isfinite(t):
                raise ValueError(f"timestep must be finite, got {t}")
            return float(t)
        if not isinstance(t, torch.Tensor) or t.dim() > 1 or t.numel() == 0:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"timestep must be a number, a 0-d tensor or a (batch,) tensor, got {shape}")
        self.host_reads += t.device.type != "cpu"
        lo, hi = torch.stack([t.min(), t.max()]).tolist() if t.dim() else (float(t),) * 2
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"timestep must be finite, got {t.flatten()[:4].tolist()}")
        if lo != hi:
            raise ValueError(f"timestep must be the same for the whole batch to skip a step, got {lo} .. {hi}")
        return float(lo)

    def _goes_back(self, gen: _Generation, tau: float) -> bool:
        direction = self.direction or (math.copysign(1.0, gen.taus[1] - gen.taus[0]) if len(gen.taus) > 1 else 0.0)
        return direction != 0.0 and (tau - gen.tau) * direction < 0

    def _end_step(self, gen: _Generation) -> None:
        """Hand the finished real step's velocity (all branches, concatenated) to the engine."""
        if gen.k >= 0 and gen.real and gen.outputs:
            if gen.branches is None:
                gen.branches = len(gen.outputs)
            elif len(gen.outputs) != gen.branches:
                raise ValueError(f"step {gen.k} made {len(gen.outputs)} model calls, the steps before it "
                                 f"{gen.branches}; the wrapper needs the same calls on every step")
            v = gen.outputs[0] if len(gen.outputs) == 1 else torch.cat([o.reshape(-1) for o in gen.outputs])
            gen.run.real(gen.k, gen.tau, v)
        gen.outputs = []

    def _call(self, gen: _Generation, args, kwargs):
        b = gen.branch
        x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() > 1), None)
        shape = None if x is None else tuple(x.shape)
        if gen.inputs.setdefault(b, shape) != shape:
            raise ValueError(f"the model's input changed shape within a generation, from {gen.inputs[b]} to {shape} "
                             f"(step {gen.k}, call {b + 1} of the step); call reset() between generations")
        if not gen.real:
            if gen.predicted is None:  # one extrapolation per step, split into its branches
                flat = gen.run.extrapolate(gen.k, gen.tau)
                sizes = [math.prod(gen.shapes[i]) for i in range(len(gen.shapes))]
                parts = [flat] if len(sizes) == 1 else flat.reshape(-1).split(sizes)
                gen.predicted = [p.reshape(gen.shapes[i]) for i, p in enumerate(parts)]
            if b >= len(gen.predicted):
                raise ValueError(f"step {gen.k} has more model calls than the real steps before it "
                                 f"({len(gen.predicted)}); the wrapper needs the same calls on every step")
            gen.skipped_calls += 1
            self.skipped_calls += 1
            return gen.rebuild[b](gen.predicted[b])
        out = self.model(*args, **kwargs)
        gen.model_calls += 1
        self.model_calls += 1
        v = gen.guard.own(first_tensor(out).detach())  # a reused output buffer is refused
        if gen.shapes.setdefault(b, v.shape) != v.shape:
            raise ValueError(f"model output changed shape from {tuple(gen.shapes[b])} to {tuple(v.shape)} "
                             f"(step {gen.k}, call {b + 1} of the step)")
        gen.rebuild[b] = _rebuilder(out)
        gen.outputs.append(v)
        return out

    # -- end of a generation ---------------------------------------------------------

    def _finish(self, gen: _Generation) -> None:
        self._end_step(gen)
        steps = gen.k + 1
        run = gen.run
        if run.calibrating:
            self._calibrate(gen)
        else:
            info = self.skips.end(run, steps - len(run.skipped))
            self.host_reads += info["host_reads"]
        self.last_generation = {"steps": steps, "skipped_steps": list(run.skipped),
                                "model_calls": gen.model_calls, "skipped_calls": gen.skipped_calls,
                                "calibration": run.calibrating}

    def _controller(self, steps: int, **override) -> SkipController:
        o = {**self.options, **override}
        return SkipController(steps, calls=o["calls"], tolerance=o["tolerance"], policy=self.spec, order=o["order"],
                              max_run=None if self.spec.fixed_runs else min(self._table_runs, steps - 2))

    def _calibrate(self, gen: _Generation) -> None:
        T, p = gen.k + 1, self.order
        if T < p + 3:
            raise ValueError(f"the calibration generation had {T} steps; order {p} needs at least {p + 3}")
        taus = gen.taus
        lengths = [abs(b - a) for a, b in zip(taus, taus[1:])]
        lengths.append(lengths[-1])
        weights = [T * d / sum(lengths) for d in lengths]
        skips = self._controller(T)
        table, eta = gen.run.recorder.read(weights)
        self.host_reads += 1  # the table and the base's error estimates, in one transfer
        R = skips.max_run
        cut = (slice(None),) + (slice(0, R + 2),) * (p + 1)  # the recorder's R may exceed the loop's
        skips.weights = _weights(weights)
        skips.calibrate_from(table[cut].contiguous(), eta)
        self._install(skips, list(taus))

    def _install(self, skips: SkipController, taus: list) -> None:
        self.skips, self.times = skips, taus
        self.direction = math.copysign(1.0, taus[1] - taus[0])

    def extra_repr(self) -> str:
        """The settings given and whether (and on how many steps) the wrapper is calibrated, for
        ``nn.Module``'s repr."""
        state = f"calibrated on {self.steps} steps" if self.calibrated else "not calibrated"
        knobs = ", ".join([f"policy={self.spec!r}"] + [f"{k}={v}" for k, v in self.options.items() if v is not None])
        return f"{knobs}; {state}"
