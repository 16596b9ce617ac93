"""A tiny, self-contained reader for MNIST's raw ``idx`` files.

The idx format (LeCun et al.) is a big-endian header followed by raw data::

    bytes 0-1   zero
    byte  2     data type code (0x08 = uint8; the only one MNIST uses)
    byte  3     number of dimensions d
    4*d bytes   the dimensions, big-endian int32
    rest        the data, row-major

so the magic number, read as a big-endian int32, is ``0x0803 = 2051`` for the
image files (N, 28, 28) and ``0x0801 = 2049`` for the label files (N,).

Files may be gzip-compressed (``.gz``); this is detected from the first two
bytes, not from the name.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["read_idx", "load_mnist_idx"]

_GZIP_MAGIC = b"\x1f\x8b"
_UINT8_CODE = 0x08


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx (optionally gzipped) file of uint8 data.

    Args:
        path: path to an ``*-idx?-ubyte`` or ``*-idx?-ubyte.gz`` file.

    Returns:
        ``np.ndarray`` of dtype uint8 with the shape stored in the header,
        e.g. ``(N, 28, 28)`` for images, ``(N,)`` for labels.

    Raises:
        ValueError: if the header is malformed, the type is not uint8, or the
            payload length does not match the header's dimensions.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic {raw[:4]!r})")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _UINT8_CODE:
        raise ValueError(f"{path}: idx data type 0x{dtype_code:02x} unsupported (only uint8)")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims)) if dims else 1
    payload = len(raw) - header_len
    if payload != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but payload has {payload} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def load_mnist_idx(root: str | os.PathLike, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """Load one MNIST split from ``root`` as raw uint8 arrays.

    Args:
        root: folder holding ``{split}-images-idx3-ubyte[.gz]`` and
            ``{split}-labels-idx1-ubyte[.gz]``.
        split: ``"t10k"`` (test, 10,000 digits) or ``"train"``.

    Returns:
        ``(images, labels)``: uint8 arrays of shapes ``(N, 28, 28)`` and ``(N,)``.

    Raises:
        FileNotFoundError: if either file is missing (with or without ``.gz``).
        ValueError: if the files are malformed or their lengths disagree.
    """
    def find(stem: str) -> str:
        for name in (stem + ".gz", stem):
            p = os.path.join(root, name)
            if os.path.exists(p):
                return p
        raise FileNotFoundError(f"no {stem}[.gz] in {root}")

    images = read_idx(find(f"{split}-images-idx3-ubyte"))
    labels = read_idx(find(f"{split}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"MNIST {split} in {root}: images {images.shape} and labels {labels.shape} disagree")
    return images, labels
