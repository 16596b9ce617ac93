"""Clips as pictures: an animated GIF of clips tiled in a grid, or a PNG with one row of frames
per clip (sample.py's --out for a video model).

Clips are (N, F, C, H, W) in [-1, 1]; pictures are (C, H', W') in [0, 1], as
``models.sampling.grid_image`` makes them.
"""
from __future__ import annotations

import os

import torch

from fastflow.atomic import atomic_write
from models.sampling import grid_image

__all__ = ["VIDEO_FORMATS", "video_format", "strip_image", "grid_frames", "write_gif", "GIF_FRAME_MS"]

VIDEO_FORMATS = {".gif": "an animated GIF, the clips tiled in a grid",
                 ".png": "a PNG, one row of frames per clip"}
GIF_FRAME_MS = 100  # 10 frames per second (a GIF counts in hundredths of a second)
BAR_HEIGHT = 3      # pixels of the bar under each GIF frame that grows with the frame index


def video_format(path: str, flag: str = "--out") -> str:
    """".gif" or ".png", from ``path``'s extension (any case).

    Raises:
        ValueError: for another extension, naming the flag and the formats.
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in VIDEO_FORMATS:
        kinds = "; ".join(f"{e}: {what}" for e, what in VIDEO_FORMATS.items())
        raise ValueError(f"{flag} {path}: a video model's samples are written as .gif or .png ({kinds}), "
                         f"not {ext or 'a file without an extension'}")
    return ext


def strip_image(clips: torch.Tensor) -> torch.Tensor:
    """(N, F, C, H, W) clips as one picture, clip n in row n, frame f in column f."""
    return grid_image(clips.flatten(0, 1), nrow=clips.shape[1])


def grid_frames(clips: torch.Tensor, nrow: int) -> torch.Tensor:
    """(F, C, H', W'): frame f of every clip, tiled ``nrow`` clips to a row."""
    return torch.stack([grid_image(clips[:, f], nrow) for f in range(clips.shape[1])])


def write_gif(frames: torch.Tensor, path: str, frame_ms: int = GIF_FRAME_MS) -> None:
    """(F, C, H, W) pictures in [0, 1] (C = 1 or 3) as a GIF that loops for ever, one frame every
    ``frame_ms`` ms. Under each frame a bar grows from 1/F to the full width: it shows where the
    loop is, and keeps every frame distinct (Pillow merges identical consecutive frames into one,
    which would change the frame count)."""
    from PIL import Image
    Fr, C, H, W = frames.shape
    bar = torch.ones(Fr, C, BAR_HEIGHT, W)
    for f in range(Fr):
        bar[f, :, 1:, : max(1, round(W * (f + 1) / Fr))] = 0
    pixels = (torch.cat([frames.clamp(0, 1), bar], 2) * 255).round().to(torch.uint8)
    if C not in (1, 3):
        raise ValueError(f"a GIF frame has 1 or 3 channels, got {C}")
    images = [Image.fromarray(p[0].numpy() if C == 1 else p.permute(1, 2, 0).numpy()) for p in pixels]
    atomic_write(path, lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                                                duration=frame_ms, loop=0))
