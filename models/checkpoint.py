"""Checkpoints that rebuild their model, written atomically.

A full training checkpoint holds
    model, ema, optimizer  state dicts
    step                   number of completed optimisation steps
    config                 DiTConfig as a dict
    args                   the training script's arguments (dict)
    data                   dataset statistics: name, image_size, channels, num_classes, normalization
A slim (shipped) checkpoint holds only `ema`, `config` (+ optionally data/step/args).

A checkpoint is identified by its content, not its name or size (a retrained model of the same
config has the same size): ``file_sha256`` is the sha256 of its bytes, computed once per process
for each (file, inode, modification time, size). The shipped DiT (2.6 MB) takes 2.5 ms to hash
from the page cache on one CPU core, 30 us when cached.

The model is a rectified-flow velocity field with t in [0, 1], t = 0 noise,
t = 1 data, x_t = (1 - t) * noise + t * data, target = data - noise.
"""

import functools
import hashlib
import os
from dataclasses import asdict, fields

import torch

from fastflow.atomic import atomic_write
from models.dit import DiT, DiTConfig

__all__ = ["CheckpointError", "FULL_KEYS", "SLIM_KEYS", "save_checkpoint", "load_checkpoint", "load_model",
           "file_sha256"]

FULL_KEYS = ("model", "ema", "optimizer", "step", "config", "args", "data")
SLIM_KEYS = ("ema", "config")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, incomplete or does not match what was expected."""


@functools.lru_cache(maxsize=64)
def _sha256(path: str, inode: int, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, cached for the process by (real path, inode, mtime, size):
    a file replaced or rewritten is hashed again.

    Raises:
        OSError: the file cannot be read.
    """
    path = os.path.realpath(os.fspath(path))
    st = os.stat(path)
    return _sha256(path, st.st_ino, st.st_mtime_ns, st.st_size)


def save_checkpoint(path: str | os.PathLike, **payload) -> None:
    """torch.save(payload) to `path` atomically.

    Writes to a temporary file in the same directory, fsyncs it, then
    `os.replace`s it over `path`; if anything fails midway the old file is untouched
    and the temporary file is removed. A DiTConfig under `config` is stored as a dict.
    """
    path = os.fspath(path)
    if isinstance(payload.get("config"), DiTConfig):
        payload["config"] = asdict(payload["config"])
    atomic_write(path, lambda f: torch.save(payload, f))


def config_from_dict(d: dict, path: str = "<dict>") -> DiTConfig:
    """DiTConfig(**d), with a CheckpointError naming unknown or missing fields."""
    if not isinstance(d, dict):
        raise CheckpointError(f"checkpoint {path}: 'config' should be a dict, got {type(d).__name__}")
    names = {f.name for f in fields(DiTConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise CheckpointError(f"checkpoint {path}: config has unknown fields {unknown}")
    try:
        return DiTConfig(**d)
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path}: bad config {d}: {e}") from e


def load_checkpoint(
    path: str | os.PathLike,
    required: tuple[str, ...] = SLIM_KEYS,
    expected_config: DiTConfig | dict | None = None,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Load and validate a checkpoint written by `save_checkpoint`.

    Args:
        path: file to read.
        required: keys the payload must hold (FULL_KEYS to resume training).
        expected_config: if given, the stored config must equal it.
        map_location: passed to torch.load.

    Returns:
        The payload dict (config still a dict).

    Raises:
        CheckpointError: file missing, truncated or not a checkpoint, missing keys,
            or config mismatch. The message names the path and the problem.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, pickle errors...
        size = os.path.getsize(path)
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is corrupt or truncated and cannot be read: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, expected a dict payload")
    missing = [k for k in required if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing keys {missing} (has {sorted(payload)})")
    if expected_config is not None:
        want = asdict(expected_config) if isinstance(expected_config, DiTConfig) else dict(expected_config)
        have = payload.get("config")
        if have != want:
            diff = {k: (have.get(k) if isinstance(have, dict) else None, want.get(k)) for k in want
                    if not isinstance(have, dict) or have.get(k) != want.get(k)}
            raise CheckpointError(f"checkpoint {path}: config mismatch (stored, expected): {diff}")
    return payload


def load_model(
    path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[DiT, DiTConfig, dict]:
    """Rebuild a DiT from a checkpoint file (full or slim) and load its weights.

    Args:
        path: checkpoint file.
        ema: load the EMA weights (default; the only ones in a slim file) or the raw ones.
        device: where to put the model.

    Returns:
        (model in eval mode, float32, on `device`; its DiTConfig; meta dict with
        `data`, `step`, `args` when stored).
    """
    key = "ema" if ema else "model"
    payload = load_checkpoint(path, required=("config", key))
    config = config_from_dict(payload["config"], os.fspath(path))
    model = DiT(config)
    state = payload[key]
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (RuntimeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: '{key}' weights do not fit the stored config: {e}") from e
    model.to(device).eval()
    meta = {k: payload[k] for k in ("data", "step", "args") if k in payload}
    return model, config, meta
