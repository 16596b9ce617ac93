"""Velocity models written in another convention, wrapped into ours.

Ours: t in [0, 1], t = 0 is noise, t = 1 is data, x_t = (1 - t) noise + t data, and the model
returns v = dx/dt = data - noise; it is called as ``velocity(x=x, t=t, **extras)`` with t of
shape (batch,).

Many libraries run time the other way: Stable Diffusion 3 and Flux in ``diffusers`` use the
noise level sigma = 1 - t (sigma = 1 noise, 0 data), x = (1 - sigma) data + sigma noise, and
a network predicting noise - data = dx/dsigma, fed the timestep 1000 sigma. Since
v = data - noise whatever the direction of time, the adapter only

* maps our t to the model's time:   tau = t (noise at 0) or 1 - t (noise at 1), times ``scale``;
* flips the output's sign when the model predicts noise - data;
* passes x and tau under the model's own argument names.

    flow = adapt(transformer, "sd3")     # tau = 1000 (1 - t), v = -output, hidden_states=, timestep=
    EulerSampler(times=grids.shifted(28, 3.0)).sample(flow, noise, encoder_hidden_states=..., ...)

``CONVENTIONS`` lists the named ones; ``adapt(model, noise_at=1.0, prediction="noise - data",
scale=1000.0, x_arg="hidden_states", t_arg="timestep")`` states one by hand.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch

__all__ = ["Convention", "CONVENTIONS", "ConventionAdapter", "adapt", "first_tensor"]

PREDICTIONS = ("data - noise", "noise - data")


@dataclass(frozen=True)
class Convention:
    """How a model sees time and what it predicts.

    noise_at: 0.0 if the model's time is ours (noise at 0), 1.0 if reversed (noise at 1).
    prediction: "data - noise" (our v) or "noise - data" (the reversed-time velocity).
    scale: the model is fed tau * scale (1000 for diffusers' timesteps).
    x_arg, t_arg: the keywords the model takes the state and the time by.

    Raises:
        ValueError: for a ``noise_at`` other than 0 or 1, an unknown ``prediction``, or a scale
            that is not > 0.
    """

    noise_at: float = 0.0
    prediction: str = "data - noise"
    scale: float = 1.0
    x_arg: str = "x"
    t_arg: str = "t"

    def __post_init__(self):
        if self.noise_at not in (0.0, 1.0):
            raise ValueError(f"noise_at must be 0 or 1, got {self.noise_at!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")


CONVENTIONS = {
    "fastflow": Convention(),                                        # ours; also Meta's flow_matching
    "sigma": Convention(noise_at=1.0, prediction="noise - data"),    # reversed time in [0, 1]
    "sd3": Convention(noise_at=1.0, prediction="noise - data", scale=1000.0,
                      x_arg="hidden_states", t_arg="timestep"),      # diffusers SD3 / Flux transformers
}


def first_tensor(out: Any) -> torch.Tensor:
    """The prediction inside a model's output: a tensor, the first item of a tuple/list, or ``.sample``.

    Raises:
        TypeError: for an output that is none of these.
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(f"model returned {type(out).__name__}; expected a tensor, a tuple starting with one, "
                    f"or an object with a .sample tensor")


class ConventionAdapter:
    """``adapter(x=x, t=t, **extras)`` in our convention, calling ``model`` in its own (see module docstring).

    With tau = t (``noise_at=0``) or 1 - t (``noise_at=1``), the model is called as
    ``model(**{x_arg: x, t_arg: tau * scale}, **extras)``; its prediction (``first_tensor``) is
    returned as is for ``"data - noise"`` and negated for ``"noise - data"``, so the adapter
    returns v = data - noise in our time (t = 0 noise, t = 1 data), shape of x.

    Raises:
        TypeError: for a ``model`` that is not callable; when called, for a model output without
            a prediction tensor (``first_tensor``).
    """

    def __init__(self, model: Callable[..., Any], convention: Convention):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        self.model, self.convention = model, convention

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **extras) -> torch.Tensor:
        """v(x, t) in our convention for x (batch, ...) and t (batch,) (see the class docstring)."""
        c = self.convention
        tau = t if c.noise_at == 0.0 else 1 - t
        out = first_tensor(self.model(**{c.x_arg: x, c.t_arg: tau * c.scale}, **extras))
        return out if c.prediction == "data - noise" else -out

    def __repr__(self) -> str:
        return f"ConventionAdapter({type(self.model).__name__}, {self.convention})"


def adapt(model: Callable[..., Any], convention: Optional[str] = None, **fields) -> ConventionAdapter:
    """Wrap ``model`` into our convention: a named one (``CONVENTIONS``), optionally with fields
    overridden, or one given field by field (``Convention``'s fields).

    Raises:
        ValueError: for an unknown convention name (listing the known ones) or a bad field value
            (``Convention``).
        TypeError: for an unknown field, or a ``model`` that is not callable.
    """
    if convention is None:
        base = Convention()
    elif convention in CONVENTIONS:
        base = CONVENTIONS[convention]
    else:
        raise ValueError(f"unknown convention {convention!r}; choose from {sorted(CONVENTIONS)} "
                         f"or give noise_at/prediction/scale/x_arg/t_arg")
    return ConventionAdapter(model, replace(base, **fields))
