"""Models: the DiT velocity network and its checkpoint format."""

from models.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from models.dit import DIT_CONFIGS, DiT, DiTConfig, build_dit

__all__ = [
    "DiT",
    "DiTConfig",
    "DIT_CONFIGS",
    "build_dit",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
]
