"""Editing with a flow model: the same velocity field integrated along other paths.

Time convention: t = 0 noise, t = 1 data, x_t = (1 - t) noise + t data, v = data - noise. The
condition (class label, prompt embedding, guidance scale) goes in as the velocity's extras.

* **Partial generation** (SDEdit, Meng et al. 2022), ``sdedit``: noise the source to level t0,
  x_{t0} = (1 - t0) z + t0 x_src, then integrate dx/dt = v(x, t | target) from t0 to 1. Small t0
  keeps little of the source (t0 = 0 is plain sampling); t0 near 1 keeps almost all of it.
* **ODE inversion**, ``invert``: integrate dx/dt = v(x, t | source) from t = 1 back to t = 0; the
  noise it reaches regenerates the source under the source condition (up to the solvers'
  error) and an edit under another (``sampler.sample(velocity, z, **target)``).
* **FlowEdit** (Kulikov et al. 2024), ``flowedit``: inversion-free. Along a fresh noising of the
  source, x^src_t = (1 - t) z_t + t x_src, it integrates the difference of the two conditions'
  velocities at coupled points,

      dx/dt = v(x + x^src_t - x_src, t | target) - v(x^src_t, t | source),

  from x = x_src at t = t_start to t = 1, averaging the difference over ``n_avg`` noise draws per
  step (two model calls per draw). Where the two conditions agree the difference is 0 and x
  stays the source. ``noise="fresh"`` (the paper's) draws new z_t at every step, so the field
  jumps from step to step and no extrapolation from earlier steps predicts it; ``"shared"``
  keeps one z for the whole run, x^src_t is then a straight line and the field is smooth in t,
  which is what lets FastFlow skip steps of FlowEdit.

Every edit runs on any sampler of the library, FastFlow included: FastFlow calibrates on the
edit's own path (its first run of that edit configuration) and plans its K calls there; in
FlowEdit the difference field is one velocity to it, so both branches are real or skipped
together. The sampler's grid says where the path runs: from t0 to 1 for ``sdedit``
(``grids.interval``), from 1 to 0 for ``invert``, from t_start to 1 for ``flowedit``.
``save_state`` and ``load_state`` keep those calibrations with the settings of their edit, and
refuse to load them into another.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Optional, Sequence

import torch

from .result import SampleResult
from .solvers import Sampler

__all__ = ["sdedit", "invert", "flowedit", "FlowEditField", "noised", "save_state", "load_state"]

NOISES = ("fresh", "shared")


def _grid_ends(sampler: Sampler) -> tuple[float, float]:
    return float(sampler.times[0]), float(sampler.times[-1])


def _check_t(name: str, t0) -> float:
    if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not 0.0 <= t0 < 1.0 or math.isnan(t0):
        raise ValueError(f"{name} must be a number in [0, 1), got {t0!r}")
    return float(t0)


def _check_grid(sampler: Sampler, start: float, end: float, what: str) -> None:
    a, b = _grid_ends(sampler)
    if abs(a - start) > 1e-12 or abs(b - end) > 1e-12:
        raise ValueError(f"{what} runs from t = {start:g} to t = {end:g}, but the sampler's grid runs from "
                         f"{a:g} to {b:g}: build it on grids.interval(T, {start:g}, {end:g})")


def noised(source: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
    """x_t = (1 - t) noise + t source: the source noised to level t (t = 0 pure noise).

    Raises:
        ValueError: for ``noise`` of another shape than ``source``.
    """
    if noise.shape != source.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, the source {tuple(source.shape)}")
    return (1 - t) * noise + t * source


def sdedit(sampler: Sampler, velocity: Callable, source: torch.Tensor, t0: float, noise: torch.Tensor,
           **target_extras) -> SampleResult:
    """Partial generation: noise ``source`` to level ``t0`` (module docstring) and integrate to
    t = 1 under the target condition, on ``sampler``'s grid, which must run from t0 to 1.

    Args:
        sampler: any sampler on a grid from t0 to 1 (``grids.interval(T, t0)``).
        velocity: the model, ``velocity(x=x, t=t, **extras)``.
        source: (batch, ...) clean inputs (t = 1).
        t0: the noise level to restart from, in [0, 1) (0: plain sampling from ``noise``).
        noise: (batch, ...) standard normal noise; randomness is the caller's.
        **target_extras: the target condition, passed to every model call.

    Raises:
        ValueError: for a t0 outside [0, 1), a grid that does not run from t0 to 1, ``noise`` of
            another shape, and what ``sampler.sample`` raises.
    """
    t0 = _check_t("t0", t0)
    _check_grid(sampler, t0, 1.0, f"sdedit from t0 = {t0:g}")
    return sampler.sample(velocity, noised(source, noise, t0), **target_extras)


def invert(sampler: Sampler, velocity: Callable, x: torch.Tensor, **source_extras) -> SampleResult:
    """ODE inversion: integrate x (clean, t = 1) back to t = 0 under the source condition, on
    ``sampler``'s grid, which must run from 1 to 0 (e.g. ``grids.uniform(T).flip(0)``). The
    result's ``x`` is the noise that regenerates x.

    Raises:
        ValueError: for a grid that does not run from 1 to 0, and what ``sampler.sample`` raises.
    """
    _check_grid(sampler, 1.0, 0.0, "inversion")
    return sampler.sample(velocity, x, **source_extras)


class FlowEditField:
    """The FlowEdit difference field as a velocity ``field(x=x, t=t)`` (module docstring).

    At each call it takes ``n_avg`` noises z for that time, forms x^src_t = (1 - t) z + t x_src and
    returns the mean over the draws of v(x + x^src_t - x_src, t | target) - v(x^src_t, t | source):
    2 ``n_avg`` model calls, counted in ``model_calls``. With ``noise="fresh"`` draw i of time t
    comes from a generator seeded with (``seed``, t, i), so a run that skips some steps draws, at
    each step it evaluates, the same noise as a full run: a plan is measured against the same path
    it replays. With ``noise="shared"`` draw i is seeded with (``seed``, i) alone and is the same
    at every t. Finding the time needs t on the host: one read per call when t lives on a device.

    Raises:
        ValueError: for an ``n_avg`` that is not an int >= 1, a ``seed`` that is not an int, or a
            ``noise`` other than "fresh" and "shared".
    """

    def __init__(self, velocity: Callable, source: torch.Tensor, source_extras: dict, target_extras: dict,
                 n_avg: int = 1, seed: int = 0, noise: str = "fresh"):
        if isinstance(n_avg, bool) or not isinstance(n_avg, int) or n_avg < 1:
            raise ValueError(f"n_avg must be an int >= 1, got {n_avg!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
        self.velocity, self.source = velocity, source
        self.source_extras, self.target_extras = dict(source_extras), dict(target_extras)
        self.n_avg, self.seed, self.shared = n_avg, seed, noise == "shared"
        self.model_calls = 0

    def noise(self, t: float, i: int) -> torch.Tensor:
        """Draw i of time t: standard normal, shaped like the source, the same on every run (and
        at every t when the noise is shared)."""
        step = 0 if self.shared else round(t * 2 ** 30)  # shared: the fresh draw of t = 0
        # torch's CPU generator keeps 32 bits of its seed: hash the key to 32 bits, so no two times
        # share a draw by truncation (an affine key did: times 1/16 apart drew the same noise)
        key = hashlib.blake2b(f"flowedit:{self.seed}:{step}:{i}".encode(), digest_size=4).digest()
        g = torch.Generator().manual_seed(int.from_bytes(key, "little"))
        z = torch.randn(self.source.shape, generator=g, dtype=torch.float32)
        return z.to(dtype=self.source.dtype, device=self.source.device)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **extras) -> torch.Tensor:
        """The averaged difference of the two conditions' velocities at (x, t)."""
        tau = float(t.reshape(-1)[0])
        total = None
        for i in range(self.n_avg):
            x_src = noised(self.source, self.noise(tau, i), tau)
            v_tar = self.velocity(x=x + x_src - self.source, t=t, **extras, **self.target_extras)
            v_src = self.velocity(x=x_src, t=t, **extras, **self.source_extras)
            self.model_calls += 2
            d = v_tar - v_src
            total = d if total is None else total + d
        return total / self.n_avg


def flowedit(sampler: Sampler, velocity: Callable, source: torch.Tensor, source_extras: dict, target_extras: dict,
             t_start: float, n_avg: int = 1, seed: int = 0, noise: str = "fresh",
             field: Optional[FlowEditField] = None) -> SampleResult:
    """FlowEdit from ``t_start`` to 1 (module docstring) on ``sampler``'s grid, which must run
    from t_start to 1; the result's ``nfe`` counts calls of the difference field, each 2 ``n_avg``
    model calls (``info["model_calls"]`` has the total).

    Args:
        sampler: any sampler on a grid from t_start to 1.
        velocity: the model, ``velocity(x=x, t=t, **extras)``.
        source: (batch, ...) clean inputs.
        source_extras, target_extras: the two conditions.
        t_start: where the edit starts, in [0, 1): lower edits more, higher keeps more.
        n_avg: noise draws averaged per step, an int >= 1.
        seed: the seed of the noise draws (``FlowEditField``).
        noise: "fresh" draws per step (the paper's), "shared" one draw for the whole run
            (smooth in t, so FastFlow can skip; module docstring).
        field: a ``FlowEditField`` to use instead of a new one (it keeps its call count).

    Raises:
        ValueError: for a t_start outside [0, 1), a grid that does not run from t_start to 1, an
            n_avg < 1, another noise, and what ``sampler.sample`` raises.
    """
    t_start = _check_t("t_start", t_start)
    field = field or FlowEditField(velocity, source, source_extras, target_extras, n_avg, seed, noise)
    _check_grid(sampler, t_start, 1.0, f"flowedit from t_start = {t_start:g}")
    before = field.model_calls
    result = sampler.sample(field, source)
    result.info["model_calls"] = field.model_calls - before
    return result


EDIT_STATE = "fastflow-edit-state"


def _settings(settings: dict) -> dict:
    for k, v in settings.items():
        if not (v is None or isinstance(v, (str, int, float, bool))):
            raise ValueError(f"edit setting {k} must be a string, number, bool or None, got {type(v).__name__}")
    return dict(sorted(settings.items()))


def save_state(path, samplers: Sequence, **settings) -> None:
    """Write the calibrations of an edit's passes (one FastFlow sampler per pass: two for
    inversion then regeneration, one otherwise) with the edit's settings, e.g. ``method``,
    ``t0``, ``cfg``, ``target``, ``n_avg``, ``noise`` and a model tag: an error table belongs to
    one path, and the path is set by all of them. ``load_state`` refuses any other settings.

    Raises:
        ValueError: for a setting that is not a plain value, or a sampler without a state.
        OSError: naming ``path`` when it cannot be written.
    """
    from .persist import save_json
    passes = []
    for s in samplers:
        if not hasattr(s, "state_dict"):
            raise ValueError(f"{type(s).__name__} keeps no state to save: only calibrating samplers do")
        passes.append(s.state_dict())
    save_json(path, {"format": EDIT_STATE, "version": 1, "settings": _settings(settings), "passes": passes})


def load_state(path, samplers: Sequence, **settings) -> None:
    """Restore the calibrations ``save_state`` wrote into ``samplers`` (in pass order), refusing a
    file saved for other settings (another method, t0, guidance, target, ...), another number of
    passes, or states another sampler's grid or settings refuse; nothing changes unless all of it
    loads.

    Raises:
        ValueError: naming the file and the first differing setting, or what the samplers'
            ``load_state_dict`` refuse.
        OSError: when the file cannot be read (e.g. FileNotFoundError).
    """
    import copy

    from .persist import read_json
    state = read_json(path, "edit state")
    if not isinstance(state, dict) or state.get("format") != EDIT_STATE or state.get("version") != 1:
        raise ValueError(f"{path}: not an edit state file (format {EDIT_STATE!r}, version 1)")
    saved, mine = state.get("settings"), _settings(settings)
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: malformed edit state (no settings)")
    for k in sorted(set(saved) | set(mine)):
        if saved.get(k, "(unset)") != mine.get(k, "(unset)"):
            raise ValueError(f"{path}: edit state saved for {k} = {saved.get(k, '(unset)')!r}, this edit has "
                             f"{k} = {mine.get(k, '(unset)')!r} (a state belongs to one edit path)")
    passes = state.get("passes")
    if not isinstance(passes, list) or len(passes) != len(samplers):
        n = len(passes) if isinstance(passes, list) else "no"
        raise ValueError(f"{path}: edit state has {n} passes, this edit has {len(samplers)}")
    trial = [copy.deepcopy(s) for s in samplers]
    for i, (s, p) in enumerate(zip(trial, passes)):
        try:
            s.load_state_dict(p)
        except (KeyError, TypeError, OverflowError, ValueError) as e:
            raise ValueError(f"{path}: pass {i + 1}: {e}") from None
    for s, p in zip(samplers, passes):
        s.load_state_dict(p)
