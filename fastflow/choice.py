"""The best K-call sampler for a model, chosen by replaying candidates on the calibration batch.

Time convention: t = 0 noise, t = 1 data. A budget of K model calls can be spent in many ways:
a multistep rule (AB2, UniPC), a time grid optimised for a base along a reference run
(``fastflow.optgrid``), a FastFlow skip plan on the Euler or AB2 base (``CANDIDATES``). Which one is
best depends on the model and on K, and a plan's own score (summed one-step errors) can hide an
unstable run. ``BudgetSampler``
therefore decides by measurement: on its first batch it makes a reference run, builds every
candidate that can make exactly K calls, replays each from the same noise and keeps the one whose
result deviates least,

    d = ||x_K - x_ref|| / ||x_ref||        (over the whole batch),

from the reference. Euler-K is always a candidate, so the choice never deviates more than Euler-K
on the calibration batch. Where the winner steps on a grid (any candidate but a skip plan), its
interior times are then tuned to lower that same d by coordinate descent (``fastflow.gridrefine``,
at most ``refine`` more replays): a grid cut by summed one-step errors is not the grid of least
final error for a multistep rule. Later batches run the chosen sampler alone: K calls, no decisions.

Two targets, named by what x_ref is:

* ``"exact"`` (default): the exact flow, estimated by AB2 with 2T steps (on the shipped MNIST DiT
  at T = 50, 64 samples, AB2-100 is 63.7 dB from Heun-200 with an Euler last step, Euler-50 42.3 dB).
* ``"euler"``: Euler with T steps, the reference sampler to reproduce (FastFlow's own target).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import torch

from . import checks
from .fastflow import ExtrapolatedEulerSampler, FastFlowSampler
from .gridrefine import refine_times
from .optgrid import optimal_grid, step_errors, trajectory_velocities
from .persist import read_json, save_json
from .plan import min_calls, plan_skips
from .result import SampleResult
from .solvers import AdamsBashforthSampler, EulerSampler, Sampler
from .specs import DEFAULT_MAX_RUN
from .unipc import UniPCSampler

__all__ = ["BudgetSampler", "CANDIDATES", "TARGETS", "describe", "plan_steps", "rebuild"]

CHOICE_FORMAT, CHOICE_VERSION = "fastflow-choice", 2  # 2: the settings hold refine
TARGETS = ("exact", "euler")
# name -> what it is; the plans need their base's calibration run (T calls each)
CANDIDATES = {
    "euler": "Euler, uniform grid (the floor: always built)",
    "ab2": "Adams-Bashforth 2, uniform grid",
    "unipc": "UniPC-2 with corrector, uniform grid",
    "unipc-flow": "UniPC-2 with corrector on diffusers' flow grid: uniform from t = 1e-3",
    "euler-grid": "Euler on its grid optimised along Euler-T",
    "unipc-eulergrid": "UniPC-2 with corrector on Euler's optimised grid",
    "ab2-grid": "Adams-Bashforth 2 on its grid optimised along the reference run",
    "unipc-grid": "UniPC-2 with corrector on its grid optimised along the reference run",
    "unipc3-grid": "UniPC-3 with corrector on UniPC-2's optimised grid",
    "ab2-finegrid": "Adams-Bashforth 2 on its grid optimised along the reference run's own 2T-step grid",
    "unipc-finegrid": "UniPC-2 with corrector on its grid optimised along the reference run's 2T-step grid",
    "unipc3-finegrid": "UniPC-3 with corrector on UniPC-2's 2T-step optimised grid",
    "plan-euler": "FastFlow plan, Euler base, extrapolation order 1 (on a coarser grid below 9 calls at T = 50)",
    "plan-ab2": "FastFlow plan, AB2 base, extrapolation order 1",
    "plan-euler-o2": "FastFlow plan, Euler base, extrapolation order 2",
}
PLAN_BASES = {"plan-euler": ("euler", 1), "plan-ab2": ("ab2", 1), "plan-euler-o2": ("euler", 2)}
GRID_BASES = {"euler-grid": "euler", "unipc-eulergrid": "euler", "ab2-grid": "ab2", "unipc-grid": "unipc",
              "unipc3-grid": "unipc"}
# cut from all 2T states of the exact target's reference (AB2-2T), not every other one: a final step of 1/(2T)
# can follow the model's jump at t = 1 (on the MNIST DiT, UniPC-2 at 20 calls: 50.0 against 45.8 dB from the
# exact flow, 60 digits); built for the exact target where 2T <= FINE_MAX_STEPS (two-step tables cost T^3)
FINE_BASES = {"ab2-finegrid": "ab2", "unipc-finegrid": "unipc", "unipc3-finegrid": "unipc"}
FINE_MAX_STEPS = 100
FLOW_START = 1e-3  # diffusers' flow sigmas start at sigma = 1 - 1/1000: UniPC's second step is then of order 2
BUDGETS = (6, 8, 10, 12, 14, 16, 20, 25, 32, 40)  # the calls tried, in order, for a tolerance
# replays spent tuning the chosen grid's times on the calibration batch (fastflow.gridrefine): on the MNIST DiT,
# 60 digits of other noise, the choice at 12 calls went from 41.3 to 45.4 dB from the exact flow, at 8 from 37.5 to 39.0
REFINE_EVALS = 100


def plan_steps(steps: int, calls: int, order: int = 1) -> Optional[int]:
    """The grid a K-call skip plan of extrapolation ``order`` lives on when the user's grid has T
    steps: T itself where runs of at most ``DEFAULT_MAX_RUN`` skips allow K calls (K >=
    ``min_calls``, 9 at T = 50 for order 1), else the finest coarser uniform grid that does (44
    steps for K = 8, 30 for K = 6); None where none does (K > T, or too few steps for the order).

    Raises:
        Nothing (a bad T or K gives None).
    """
    for T in range(steps, order + 2, -1):
        if calls > T:
            return None
        if calls >= min_calls(T, order, DEFAULT_MAX_RUN):
            return T
    return None


def describe(sampler: Sampler) -> dict:
    """A chosen sampler as plain JSON-able data (``rebuild`` inverts it).

    Raises:
        TypeError: for a sampler kind a choice never holds.
    """
    times = sampler.times.tolist()
    if isinstance(sampler, ExtrapolatedEulerSampler):
        return {"kind": "plan", "schedule": sampler.state_dict(), "times": times}
    if isinstance(sampler, UniPCSampler):
        return {"kind": "unipc", "order": sampler.order, "times": times}
    if isinstance(sampler, AdamsBashforthSampler):
        return {"kind": "ab2", "order": sampler.order, "times": times}
    if type(sampler) is EulerSampler:
        return {"kind": "euler", "times": times}
    raise TypeError(f"a choice holds no {type(sampler).__name__}")


def rebuild(desc: dict) -> Sampler:
    """The sampler ``describe`` described.

    Raises:
        ValueError: for an unknown kind or values the sampler refuses.
    """
    kind = desc.get("kind") if isinstance(desc, dict) else None
    if kind == "plan":
        return ExtrapolatedEulerSampler.from_state_dict(desc["schedule"])
    if kind == "unipc":
        return UniPCSampler(times=desc["times"], order=desc["order"])
    if kind == "ab2":
        return AdamsBashforthSampler(times=desc["times"], order=desc["order"])
    if kind == "euler":
        return EulerSampler(times=desc["times"])
    raise ValueError(f"unknown chosen sampler kind {kind!r}")


def deviation(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| over the batch, in float64.

    Raises:
        RuntimeError: for tensors of shapes that do not broadcast (torch's error).
    """
    ref = ref.double()
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


class BudgetSampler(Sampler):
    """The candidate with the least replayed deviation from the target at K model calls (module
    docstring), chosen on the first batch and played alone afterwards.

    Calibration (the first ``sample``, or ``calibrate``) costs, on its batch: the reference run (2T
    calls for ``"exact"``, T for ``"euler"``), one calibration run per plan base in use (Euler order
    1, AB2, Euler order 2; T calls, or T' < T where K is below what runs of skips allow on T, see
    ``plan_steps``), an Euler-T run for Euler's grids with the exact target unless the Euler plan's
    calibration run is that run, K calls per candidate replayed, and K per replay of the grid
    tuning (at most ``refine``); ``info`` counts them. Its result is the chosen sampler's replay,
    so the first batch is a K-call sample too.

    Args:
        steps: T, the uniform grid the reference, the optimised grids and the plans live on.
        calls: K in [2, T], model calls per run after calibration.
        tolerance: instead of ``calls``: the fewest calls among ``BUDGETS`` (and T) whose best
            candidate deviates at most this much (a relative deviation d, module docstring) from the
            target; the best at T if none does (with a RuntimeWarning).
        target: ``"exact"`` or ``"euler"`` (module docstring).
        candidates: names from ``CANDIDATES`` (default: all); ``"euler"`` is always added.
        refine: most replays spent tuning the winner's grid (module docstring; 0: none).

    ``SampleResult.info`` keys: ``calibration_run`` (bool), ``choice`` (the ``choice`` dict, on the
    calibration run), ``host_reads``; after calibration those of the chosen sampler.

    ``choice`` (after calibration): ``name``, ``calls``, ``target``, ``deviation`` of the chosen
    candidate, ``deviations`` ({name: d or None where it cannot make K calls} for each K tried),
    ``calibration_calls``, ``sampler`` (``describe``) and ``refined`` (None where nothing was tuned:
    a plan won, or ``refine=0``; else the tuning's ``replays``, ``calls`` and the ``deviation_before``
    it, equal to ``deviation`` where no move helped); ``freeze()`` gives the chosen sampler.

    Raises:
        ValueError: for a T that is not an int >= 4, both or neither of ``calls`` and
            ``tolerance``, a ``calls`` below 2 (no candidate can) or above T, a tolerance that is
            not a finite number > 0, an unknown target or candidate, a ``refine`` that is not an
            int >= 0.
    """

    def __init__(self, steps: int = 50, calls: Optional[int] = None, tolerance: Optional[float] = None,
                 target: str = "exact", candidates: Optional[Sequence[str]] = None, refine: int = REFINE_EVALS):
        T = checks.int_in("steps", steps, 4, checks.MAX_STEPS)
        super().__init__(T)
        if (calls is None) == (tolerance is None):
            raise ValueError("give a budget: exactly one of calls=K or tolerance=")
        if calls is not None:
            if checks.is_int(calls) and calls < 2:
                raise ValueError(f"calls={calls}: no candidate can make fewer than 2 model calls")
            checks.int_in("calls", calls, 2, T)
        if tolerance is not None:
            checks.finite("tolerance", tolerance, lo=0.0)
            if tolerance <= 0:
                raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}: choose 'exact' (the exact flow) or 'euler' (Euler-{T})")
        names = list(CANDIDATES) if candidates is None else list(candidates)
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown:
            raise ValueError(f"unknown candidates {unknown}, choose from {list(CANDIDATES)}")
        self.candidates = ["euler"] + [n for n in dict.fromkeys(names) if n != "euler"]
        self.refine = checks.int_in("refine", refine, 0)
        self.calls, self.tolerance, self.target = calls, tolerance, target
        self.choice: Optional[dict] = None
        self.chosen: Optional[Sampler] = None

    @property
    def calibrated(self) -> bool:
        """Whether a choice has been made (or loaded)."""
        return self.chosen is not None

    @property
    def keeps_outputs(self) -> bool:
        """The chosen sampler's (True before calibration: the candidates include multistep rules)."""
        return True if self.chosen is None else self.chosen.keeps_outputs

    def expected_calls(self) -> Optional[int]:
        """K after calibration; before it, the calibration's calls for a fixed ``calls`` and
        ``refine=0`` (None for a tolerance, whose cost depends on where it stops, or with grid tuning,
        whose replays depend on what it finds)."""
        if self.calibrated:
            return self.choice["calls"]
        if self.calls is None or self.refine:
            return None
        T = self.steps
        runs = {self._plan_run(n, self.calls) for n in self.candidates if n in PLAN_BASES} - {None}
        built = [n for n in self.candidates if (n not in PLAN_BASES or self._plan_run(n, self.calls))
                 and (n not in FINE_BASES or self._fine)]
        reference = 2 * T if self.target == "exact" else T
        return reference + sum(r[2] for r in runs) + T * self._needs_euler_run(runs) + self.calls * len(built)

    @property
    def _fine(self) -> bool:
        """Whether the 2T-step grids (``FINE_BASES``) are built: the exact target, 2T <= FINE_MAX_STEPS."""
        return self.target == "exact" and 2 * self.steps <= FINE_MAX_STEPS

    def _plan_run(self, name: str, K: int) -> Optional[tuple]:
        """(base, order, T') of the calibration run plan ``name`` needs for K calls (``plan_steps``),
        or None where no plan can make K."""
        base, order = PLAN_BASES[name]
        steps = plan_steps(self.steps, K, order)
        return None if steps is None else (base, order, steps)

    # -- calibration -------------------------------------------------------------------

    def _build(self, name: str, K: int, grids: dict, tables: dict) -> Optional[Sampler]:
        """Candidate ``name`` with K calls, or None where it cannot make exactly K; ``grids`` maps
        "T" (and "2T" where built) to the reference run's (times, {base: step-error table})."""
        if name in PLAN_BASES:
            run = self._plan_run(name, K)
            if run is None:
                return None
            base, order, steps = run
            table, max_run = tables[run]
            try:
                skip = plan_skips(table, steps, K, order, max_run)
            except ValueError:  # no finite plan with K calls
                return None
            return ExtrapolatedEulerSampler(steps, skip, order, base=base)
        if name in FINE_BASES and "2T" not in grids:
            return None
        if name in GRID_BASES or name in FINE_BASES:
            times, errors = grids["2T" if name in FINE_BASES else "T"]
            idx = optimal_grid(errors[FINE_BASES.get(name) or GRID_BASES[name]], K)
            grid = torch.as_tensor(times, dtype=torch.float64)[idx]
            if name == "euler-grid":
                return EulerSampler(times=grid)
            if name == "unipc-eulergrid":
                return UniPCSampler(times=grid)
            if name in ("ab2-grid", "ab2-finegrid"):
                return AdamsBashforthSampler(times=grid)
            return UniPCSampler(times=grid, order=3 if name.startswith("unipc3") else 2)
        if name == "ab2":
            return AdamsBashforthSampler(K)
        if name == "unipc":
            return UniPCSampler(K)
        if name == "unipc-flow":
            return UniPCSampler(times=FLOW_START + (1 - FLOW_START) * torch.linspace(0, 1, K + 1, dtype=torch.float64))
        return EulerSampler(K)

    def _grid_tables(self, times: list, states: list, bases: list, fine_bases: list,
                     euler_states: Optional[list]) -> dict:
        """{"T": the T-step grid and each base's step-error table (``fastflow.optgrid``), "2T": the
        same on the reference run's full grid for ``fine_bases``}: Euler's along Euler-T
        (``euler_states``), the two-step bases' along the reference run, Euler-T's own states and
        velocities or AB2-2T's states with its second-order velocities (every other one for "T").
        (On the MNIST DiT, grids cut for Euler along Euler-50 serve UniPC better at 6 to 12 calls than
        any cut along AB2-100: 32.1 against 31.3 dB at K = 6, 40.9 against 37.8 at K = 10.)"""
        grids, velocities = {}, None
        if self.target == "exact":
            velocities = trajectory_velocities(times, states)
            if fine_bases:
                grids["2T"] = (times, {b: step_errors(times, states, b, velocities=velocities) for b in fine_bases})
            velocities, times, states = velocities[::2], times[::2], states[::2]
        tables = {b: step_errors(times, states, b, velocities=velocities) for b in bases if b != "euler"}
        if "euler" in bases:
            tables["euler"] = step_errors(times, euler_states, "euler")
        grids["T"] = (times, tables)
        return grids

    def _needs_euler_run(self, runs: set) -> bool:
        """Whether Euler's grids need an Euler-T run of their own: with the exact target, unless the
        Euler-base plan's calibration run (Euler-T itself) is made anyway."""
        euler_grids = any(GRID_BASES.get(n) == "euler" for n in self.candidates)
        return euler_grids and self.target == "exact" and ("euler", 1, self.steps) not in runs

    def calibrate(self, velocity, x_init: torch.Tensor, *, trace: bool = False, **kwargs) -> SampleResult:
        """Choose now, on ``x_init`` (class docstring), replacing any earlier choice; returns the chosen
        candidate's replay with ``nfe`` = every call the calibration made.

        Raises:
            ValueError: as ``sample`` for a bad ``x_init`` or velocity; nothing is kept then.
        """
        T, calls = self.steps, 0
        ref_sampler = AdamsBashforthSampler(2 * T) if self.target == "exact" else EulerSampler(T)
        bases = sorted({GRID_BASES[n] for n in self.candidates if n in GRID_BASES})
        fine_bases = sorted({FINE_BASES[n] for n in self.candidates if n in FINE_BASES}) if self._fine else []
        ref = ref_sampler.sample(velocity, x_init, trace=bool(bases or fine_bases), **kwargs)
        calls += ref.nfe
        euler_states = ref.trace if self.target == "euler" else None

        budgets = [self.calls] if self.calls is not None else sorted({b for b in BUDGETS if 2 <= b < T} | {T})
        tables = {}
        for name in self.candidates:  # each plan's calibration run (base, order, grid), once
            if name not in PLAN_BASES:
                continue
            for K in budgets:
                run = self._plan_run(name, K)
                if run is not None and run not in tables:
                    base, order, steps = run
                    ff = FastFlowSampler(steps, base=base, order=order)
                    keep = run == ("euler", 1, T) and "euler" in bases and euler_states is None
                    out = ff.calibrate(velocity, x_init, trace=keep, **kwargs)  # Euler-T: its states serve the grids
                    calls += out.nfe
                    euler_states = out.trace if keep else euler_states
                    tables[run] = (ff.table, ff.max_run)
        if "euler" in bases and euler_states is None:
            euler = EulerSampler(T).sample(velocity, x_init, trace=True, **kwargs)
            calls += euler.nfe
            euler_states = euler.trace
        grids = (self._grid_tables(ref_sampler.times.tolist(), ref.trace, bases, fine_bases, euler_states)
                 if bases or fine_bases else {})

        tried = {}
        for K in budgets:
            devs, results, built = {}, {}, {}
            for name in self.candidates:
                sampler = self._build(name, K, grids, tables)
                if sampler is None:
                    devs[name] = None
                    continue
                out = sampler.sample(velocity, x_init, trace=trace, **kwargs)
                calls += out.nfe
                devs[name], results[name], built[name] = deviation(out.x, ref.x), out, sampler
            tried[K] = devs
            best = min(results, key=lambda n: (devs[n], self.candidates.index(n)))
            if self.tolerance is None or devs[best] <= self.tolerance:
                break
        else:
            warnings.warn(f"no candidate reaches tolerance {self.tolerance:g} within {T} calls; the best at {T} "
                          f"calls deviates {devs[best]:.3g}", RuntimeWarning, stacklevel=2)
        chosen, out, chosen_dev, refined = built[best], results[best], devs[best], None
        if self.refine and not isinstance(chosen, ExtrapolatedEulerSampler) and len(chosen.times) > 2:
            chosen, out, chosen_dev, refined = self._tune(chosen, out, chosen_dev, ref.x, velocity, x_init, trace,
                                                          kwargs)
            calls += refined["calls"]
        self.chosen = chosen
        self.choice = {"name": best, "calls": K, "target": self.target, "deviation": chosen_dev,
                       "deviations": {str(k): v for k, v in tried.items()}, "calibration_calls": calls,
                       "sampler": describe(self.chosen), "refined": refined}
        return SampleResult(x=out.x, nfe=calls, skipped=out.skipped, trace=out.trace,
                            info={"calibration_run": True, "choice": self.choice,
                                  "host_reads": out.info.get("host_reads", 0)})

    def _tune(self, chosen: Sampler, out: SampleResult, d0: float, ref: torch.Tensor, velocity, x_init,
              trace: bool, kwargs: dict) -> tuple:
        """``chosen`` with its interior times tuned by ``refine_times`` against ``ref``: (the best
        sampler replayed, its replay, its deviation, the ``refined`` record); ``chosen`` itself where
        no move helped."""
        desc, best, made = describe(chosen), {"sampler": chosen, "out": out, "d": d0}, 0

        def replay(times):
            nonlocal made
            sampler = rebuild({**desc, "times": times.tolist()})
            res = sampler.sample(velocity, x_init, trace=trace, **kwargs)
            made += res.nfe
            d = deviation(res.x, ref)
            if d < best["d"]:  # the same strict test refine_times keeps its best by
                best.update(sampler=sampler, out=res, d=d)
            return d

        tuned = refine_times(chosen.times, replay, self.refine, start_deviation=d0)
        return best["sampler"], best["out"], best["d"], {"replays": tuned.evals, "calls": made,
                                                         "deviation_before": d0}

    def sample(self, velocity, x_init: torch.Tensor, **kwargs) -> SampleResult:
        """Calibrate on the first call (``calibrate``), then run the chosen sampler (K calls).
        Takes ``Sampler.sample``'s arguments.

        Raises:
            ValueError, TypeError: as ``Sampler.sample``.
        """
        if not self.calibrated:
            return self.calibrate(velocity, x_init, **kwargs)
        result = self.chosen.sample(velocity, x_init, **kwargs)
        result.info["calibration_run"] = False
        return result

    def freeze(self) -> Sampler:
        """The chosen sampler (K calls, no decisions).

        Raises:
            ValueError: before calibration.
        """
        if not self.calibrated:
            raise ValueError("nothing chosen yet: sample (or calibrate) once first")
        return self.chosen

    # -- persistence -------------------------------------------------------------------

    def _settings(self) -> dict:
        return {"steps": self.steps, "calls": self.calls, "tolerance": self.tolerance, "target": self.target,
                "candidates": self.candidates, "refine": self.refine}

    def state_dict(self) -> dict:
        """The settings and the choice as plain JSON-able data."""
        return {"format": CHOICE_FORMAT, "version": CHOICE_VERSION, **self._settings(), "choice": self.choice}

    def load_state_dict(self, state: dict) -> None:
        """Restore a choice; nothing changes unless all of it is valid.

        Raises:
            ValueError: naming the field, for another format or version, a state chosen with other
                settings (target, grid, budget, candidates), or a malformed choice.
        """
        if not isinstance(state, dict) or state.get("format") != CHOICE_FORMAT:
            raise ValueError(f"not a budget choice (missing 'format': '{CHOICE_FORMAT}')")
        if state.get("version") != CHOICE_VERSION:
            raise ValueError(f"choice version {state.get('version')!r}, this library reads {CHOICE_VERSION}")
        for key, mine in self._settings().items():
            if state.get(key) != mine:
                raise ValueError(f"choice was made with {key}={state.get(key)!r}, this sampler has {key}={mine!r}")
        choice = state.get("choice")
        if choice is None:
            self.choice = self.chosen = None
            return
        if not isinstance(choice, dict) or choice.get("name") not in self.candidates:
            raise ValueError("malformed choice: no candidate 'name' of this sampler")
        chosen = rebuild(choice.get("sampler"))
        if chosen.expected_calls() != choice.get("calls"):
            raise ValueError(f"malformed choice: its sampler makes {chosen.expected_calls()} calls, not "
                             f"{choice.get('calls')!r}")
        self.choice, self.chosen = choice, chosen

    def save_state(self, path: str | os.PathLike) -> None:
        """Write ``state_dict`` as JSON, atomically.

        Raises:
            OSError: naming ``path`` when it cannot be written.
        """
        save_json(path, self.state_dict())

    def load_state(self, path: str | os.PathLike) -> None:
        """Load a state written by ``save_state``.

        Raises:
            ValueError: naming the file, for a corrupt file or one ``load_state_dict`` refuses.
            OSError: when the file cannot be read.
        """
        state = read_json(path, "budget choice")
        try:
            self.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        knob = f"calls={self.calls}" if self.calls is not None else f"tolerance={self.tolerance}"
        chosen = f", chosen={self.choice['name']}" if self.calibrated else ""
        return f"BudgetSampler(steps={self.steps}, {knob}, target='{self.target}'{chosen})"
