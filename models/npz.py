"""Reading .npz files without trusting them: every array is checked from the zip directory and its
.npy header before any of its body is decompressed or allocated, so a small file cannot make a
large allocation.

A member's body may take at most what its header declares (dtype x shape), and that must fit the
member: a stored member holds it byte for byte, a deflated one can expand at most 1032:1. The body
is then read up to its declared size plus one byte (to notice a longer one).
"""
from __future__ import annotations

import math
import zipfile
import zlib

import numpy as np

__all__ = ["NpzError", "read_npz"]

DEFLATE_MAX_RATIO = 1032  # deflate cannot expand more
NPY_HEADER_MAX = 65536 + 16  # a version 2 header's length field is 4 bytes, but numpy reads at most 10000


class NpzError(ValueError):
    """What is wrong with an .npz (the message does not name the file: the caller does)."""


def _check_dtype(name: str, have: np.dtype, want) -> None:
    if have.hasobject:
        raise NpzError(f"{name} holds Python objects (dtype {have})")
    ok = have == want if isinstance(want, np.dtype) else (want is None or have.kind in want)
    if not ok:
        raise NpzError(f"{name} has dtype {have}, not {want if isinstance(want, np.dtype) else 'of kind ' + want}")


def read_npz(path: str, expect: dict, exact: bool = True) -> dict:
    """The arrays ``expect`` names, each checked before its body is read.

    Args:
        path: the .npz file.
        expect: name -> (dtype, shape, max_bytes). dtype: an np.dtype to match exactly, a string of
            accepted kinds ("U" unicode, "iu" integers), or None for any; shape: a tuple to match
            or None for any; max_bytes: a bound on the body or None (the member's own size is
            always a bound, see the module docstring).
        exact: the file must hold these members and no others (else others are left unread).
    Returns:
        name -> read-only array.
    Raises:
        NpzError: saying what is wrong (not a zip, members, declared sizes, dtypes, shapes, a
            body of another size than declared).
        OSError: the file cannot be opened or read.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(i.filename for i in zf.infolist())
            want = sorted(f"{n}.npy" for n in expect)
            if exact and names != want:
                raise NpzError(f"it holds {names}, not {want}")
            missing = sorted(set(want) - set(names))
            if missing:
                raise NpzError(f"it lacks {missing} (holds {names})")
            out = {}
            for name, (dtype, shape, max_bytes) in expect.items():
                info = zf.getinfo(f"{name}.npy")
                if max_bytes is not None and info.file_size > max_bytes + NPY_HEADER_MAX:
                    raise NpzError(f"{name} declares {info.file_size} bytes uncompressed, more than {max_bytes}")
                room = info.file_size if info.compress_type == zipfile.ZIP_STORED else min(
                    info.file_size, DEFLATE_MAX_RATIO * info.compress_size + NPY_HEADER_MAX)
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    have_shape, fortran, have_dtype = read_header(f)
                    _check_dtype(name, have_dtype, dtype)
                    if shape is not None and tuple(have_shape) != tuple(shape):
                        raise NpzError(f"{name} has shape {tuple(have_shape)}, not {tuple(shape)}")
                    nbytes = math.prod(have_shape) * have_dtype.itemsize
                    if max_bytes is not None and nbytes > max_bytes:
                        raise NpzError(f"{name} declares {nbytes} bytes, more than {max_bytes}")
                    if nbytes > room:
                        raise NpzError(f"{name} declares {nbytes} bytes, more than its {info.compress_size} "
                                       f"stored bytes can hold")
                    body = f.read(nbytes + 1)
                    if len(body) != nbytes:
                        raise NpzError(f"{name} holds {len(body)}{'+' if len(body) > nbytes else ''} bytes, its "
                                       f"header says {nbytes}")
                    out[name] = np.frombuffer(body, have_dtype).reshape(have_shape, order="F" if fortran else "C")
            return out
    except NpzError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, NotImplementedError, RuntimeError) as e:
        raise NpzError(f"not a readable .npz ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
