"""What a calibration run measured, and how FastFlow states are written and read back.

A ``Calibration`` is the one record every policy is built from: the error table (what every run
of skips would have cost, ``fastflow.errors``), the base solver's local error estimates eta_k,
the order p and longest run R it was recorded for, the per-step error weights (T |dt_j| / |span|
on an uneven grid; None on a uniform one) and the loop's grid (``steps``, ``times``, ``base``, or
the wrapper's timesteps). A saved state is a JSON object: a header (``format``, ``version``, the
grid and the settings the state was learned with), the record, the call budget chosen from it
(``calls_target``) and the live policy's own ``state_dict`` entries.
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import checks
from .atomic import atomic_write
from .errors import table_shape
from .plan import min_calls, plan_skips, planned_costs

__all__ = ["Calibration", "STATE_FORMAT", "STATE_VERSION", "check_header", "save_json", "load_state_file"]

STATE_FORMAT = "fastflow-bandit-state"
STATE_VERSION = 2
MAX_STATE_BYTES = 256 * 2 ** 20  # a state larger than this is not one this library wrote
MAX_DEPTH = 16                  # states nest 4 deep; deeper JSON is crafted


@dataclass
class Calibration:
    """One calibration run's measurements (module docstring).

    Raises:
        ValueError: from ``__post_init__``, for a table with NaN entries or of another shape than
            (T, (R + 2,) * (p + 1)), or ``euler_errors`` that are not T - 1 values.
    """

    table: torch.Tensor          # float64, table_shape(T, p, R), +inf where undefined
    euler_errors: torch.Tensor   # (T - 1,) float64: eta_k, the base solver's local errors
    order: int
    max_run: int
    weights: Optional[list] = None
    grid: dict = field(default_factory=dict)

    def __post_init__(self):
        T = self.table.shape[0] if self.table.dim() else 0
        if torch.isnan(self.table).any():
            raise ValueError("calibration run gave NaN extrapolation errors (non-finite velocities?)")
        if tuple(self.table.shape) != table_shape(T, self.order, self.max_run):
            raise ValueError(f"calibration table has shape {tuple(self.table.shape)}, expected "
                             f"{table_shape(T, self.order, self.max_run)}")
        if tuple(self.euler_errors.shape) != (T - 1,):
            raise ValueError(f"euler_errors has shape {tuple(self.euler_errors.shape)}, expected ({T - 1},)")

    @property
    def steps(self) -> int:
        """T, the calibrated steps."""
        return self.table.shape[0]

    @property
    def budget(self) -> float:
        """sum_k eta_k: the base solver's own estimated error, the unit of a tolerance."""
        return float(self.euler_errors.sum())

    @functools.cached_property
    def costs(self) -> torch.Tensor:
        """(T + 1,) least planned error for every call count K (``fastflow.plan.planned_costs``)."""
        return planned_costs(self.table, self.steps, self.order, self.max_run)

    def fewest_calls(self, tolerance: float) -> int:
        """The fewest K whose optimal plan's summed error is at most ``tolerance`` * ``budget`` (T if none)."""
        costs, limit = self.costs, tolerance * self.budget
        ok = [c for c in range(self.steps + 1) if math.isfinite(costs[c]) and costs[c] <= limit]
        return min(ok) if ok else self.steps

    def plan(self, calls: int) -> list[int]:
        """The optimal skip set with exactly ``calls`` calls (``fastflow.plan.plan_skips``)."""
        return plan_skips(self.table, self.steps, calls, self.order, self.max_run)

    def one_step_errors(self) -> list[float]:
        """table[k, 1, ..., 1, 1] for k = p..T-2: the error of extrapolating one step ahead."""
        ones = (1,) * self.order
        return [float(self.table[(k, *ones, 1)]) for k in range(self.order, self.steps - 1)]

    def state_dict(self) -> dict:
        """``table_shape``, ``table`` (flattened, null for +inf) and ``euler_errors``, as JSON-able data."""
        flat = self.table.reshape(-1).tolist()
        return {"table_shape": list(self.table.shape), "table": [e if math.isfinite(e) else None for e in flat],
                "euler_errors": self.euler_errors.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict, steps: int, order: int, max_run: int, weights: Optional[list] = None,
                        grid: Optional[dict] = None) -> "Calibration":
        """The record a saved state holds, checked against the settings it must fit.

        Raises:
            ValueError: naming the field, for a shape other than the settings give, or values that
                are not finite numbers >= 0 (null for an undefined table entry).
        """
        shape = table_shape(steps, order, max_run)
        if state.get("table_shape") != list(shape):
            raise ValueError(f"'table_shape' is {state.get('table_shape')!r}, expected {list(shape)}")
        values = state.get("table")
        if not isinstance(values, list) or len(values) != math.prod(shape) or not all(
                v is None or (_number(v) and v >= 0) for v in values):
            raise ValueError("'table' must list prod(table_shape) finite errors >= 0 (null for undefined)")
        eta = state.get("euler_errors")
        if not isinstance(eta, list) or len(eta) != steps - 1 or not all(_number(v) and v >= 0 for v in eta):
            raise ValueError(f"'euler_errors' must list {steps - 1} finite numbers >= 0")
        table = torch.tensor([math.inf if v is None else float(v) for v in values], dtype=torch.float64)
        return cls(table.reshape(shape), torch.tensor(eta, dtype=torch.float64), order, max_run, weights,
                   dict(grid or {}))


def _number(v) -> bool:
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an int beyond float range
        return False


def check_header(state, mine: dict, who: str = "sampler") -> None:
    """Refuse a state of another format or version, or one learned with other settings or grid
    (``mine``: the loop's grid and the controller's settings; a missing ``base`` means Euler).

    Raises:
        ValueError: naming what differs.
    """
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"not a FastFlow state (missing 'format': '{STATE_FORMAT}')")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"FastFlow state version {state.get('version')!r} is not supported "
                         f"(expected {STATE_VERSION}); calibrate again")
    defaults = {"base": "euler", "explore": 0.5}  # entries older files leave out
    theirs = {key: state.get(key, defaults.get(key)) for key in mine}
    if theirs != mine:
        diff = ", ".join(f"{k}={theirs[k]!r} ({who} has {mine[k]!r})" for k in mine if theirs[k] != mine[k])
        raise ValueError(f"state does not match this {who}: {diff}")


def calls_target(state: dict, record: Calibration, needed: bool) -> Optional[int]:
    """The saved call budget K, checked against the record (``needed``: whether None is refused).

    Raises:
        ValueError: for a K outside [min_calls, T], or a missing one when ``needed``.
    """
    K = state.get("calls_target")
    if K is not None:
        checks.int_in("'calls_target'", K, min_calls(record.steps, record.order, record.max_run), record.steps)
    elif needed:
        raise ValueError("'calls_target' is missing")
    return K


def save_json(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` as strict JSON (no NaN or infinity), atomically.

    Raises:
        OSError: naming ``path`` when it cannot be written.
    """
    atomic_write(path, lambda f: json.dump(state, f, allow_nan=False), binary=False)


def read_json(path: str | os.PathLike, what: str = "FastFlow state") -> object:
    """Parse a JSON file this library wrote, refusing files too large or too deeply nested to be one.

    Raises:
        ValueError: naming the file, for one larger than 256 MiB, not UTF-8, not JSON, or nested
            more than 16 deep.
        OSError: when the file cannot be read (e.g. FileNotFoundError).
    """
    with open(path, "rb") as f:
        data = f.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_STATE_BYTES >> 20} MiB, not a {what} file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: corrupt {what} file (not UTF-8 text)") from None
    deep = ValueError(f"{path}: corrupt {what} file (nested more than {MAX_DEPTH} deep)")
    try:
        state = json.loads(text)
    except RecursionError:  # far deeper than anything this library writes
        raise deep from None
    except ValueError as e:  # JSONDecodeError, and the int-digits limit of Python >= 3.11
        raise ValueError(f"{path}: corrupt {what} file ({e})") from None
    stack = [(state, 1)]  # what we write nests at most MAX_DEPTH deep; the checks after recurse
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, (dict, list)):
            if depth > MAX_DEPTH:
                raise deep
            stack.extend((v, depth + 1) for v in (obj.values() if isinstance(obj, dict) else obj))
    return state


def load_state_file(path: str | os.PathLike, tag: Optional[str], load: Callable[[dict], None],
                    who: str = "sampler") -> None:
    """Read a JSON state written by ``save_state``, refuse another ``tag``, and hand it to
    ``load`` (a ``load_state_dict``); every error names the file.

    Raises:
        ValueError: naming the file, for a corrupt, oversized or non-UTF-8 file, another tag, or
            what ``load`` refuses (its KeyError and TypeError on a malformed state included).
        OSError: when the file cannot be read (e.g. FileNotFoundError).
    """
    state = read_json(path)
    if isinstance(state, dict) and state.get("tag") != tag:
        raise ValueError(f"{path}: state was saved with tag {state.get('tag')!r}, this {who} is loading it "
                         f"with tag {tag!r} (a state belongs to one model and setting)")
    try:
        load(state)
    except (KeyError, TypeError, OverflowError) as e:
        raise ValueError(f"{path}: malformed FastFlow state ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
