"""What every script of the project shares on its command line.

* ``OneLineParser``: bad flags end with one line and exit status 2; ``--help`` shows each default.
* argparse types that check ranges while parsing (``positive_int``, ``finite_float``, ...), so a
  flag out of range is a bad flag (status 2), reported before any work.
* ``resolve_device``: "auto", "cpu", "cuda", "cuda:N", "mps", with a clear error for one that is
  not there.
* ``check_writable``: an output path is made ready (missing folders created) and proved writable
  before the work that fills it starts.
* ``run_cli``: runs a script's ``main`` and turns anything a user can cause (a bad file, a missing
  path, a value out of range) into one line and exit status 1.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import Callable

import torch

__all__ = ["OneLineParser", "positive_int", "nonnegative_int", "finite_float", "positive_float",
           "nonnegative_float", "seed_int", "resolve_device", "check_writable", "run_cli", "USER_ERRORS"]

# What a user's input or set-up can raise: bad values and files (ValueError, which CheckpointError
# is), paths (OSError), malformed mappings (KeyError), a missing optional package (ImportError).
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, KeyError, ImportError)  # ImportError: an optional package not installed


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and appends "(default: ...)" to every flag's help, unless
    the help states its default itself in those words (a None default that means "look for a file",
    say): a default is shown once."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments on a single line (exit status 2) and shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _ranged(kind: type, test: Callable, words: str, name: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}")
        return value
    parse.__name__ = name  # argparse names the type in some messages
    return parse


positive_int = _ranged(int, lambda v: v >= 1, "an integer >= 1", "positive_int")
nonnegative_int = _ranged(int, lambda v: v >= 0, "an integer >= 0", "nonnegative_int")
# Seeds feed torch.Generator.manual_seed after offsets of up to about 2^40 (warm-up batches, ranks).
seed_int = _ranged(int, lambda v: 0 <= v < 2 ** 62, "an integer seed in [0, 2^62)", "seed_int")
finite_float = _ranged(float, math.isfinite, "a finite number", "finite_float")
positive_float = _ranged(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0", "positive_float")
nonnegative_float = _ranged(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0",
                            "nonnegative_float")
# an EMA decay, a dropout probability: a number in [0, 1)
unit_float = _ranged(float, lambda v: 0 <= v < 1, "a number in [0, 1)", "unit_float")


def resolve_device(spec: str) -> torch.device:
    """The device a ``--device`` flag names; "auto" is CUDA when there is one, else the CPU.

    Raises:
        ValueError: for a name torch does not know, or a device this machine does not have
            ("CUDA requested but not available", an index past the last GPU, no MPS).
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"CUDA requested ({spec}) but not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{spec} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"MPS requested ({spec}) but not available on this machine")
    elif device.type != "cpu":
        raise ValueError(f"device {spec!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def check_writable(path: str | os.PathLike, flag: str) -> str:
    """Make ``path`` ready to be written later: create its missing folders and prove, with a probe
    file removed at once, that a file can be created there. The file itself is not touched.

    Returns:
        ``path`` as a string, unchanged.
    Raises:
        OSError: naming ``flag`` and ``path`` when a folder cannot be created, the folder is not
            writable, or ``path`` is an existing folder.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OSError(f"{flag} {path}: is a folder, not a file")
    directory = os.path.dirname(os.path.abspath(path))
    parent = directory
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise OSError(f"{flag} {path}: cannot write there ({parent} is a file, not a folder)")
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe.")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OSError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path


def run_cli(main: Callable, args, prog: str) -> int:
    """``main(args)``, with a user's errors (USER_ERRORS) reported as ``prog: error: ...`` on one
    line and exit status 1. Returns the exit status for ``sys.exit``."""
    try:
        main(args)
    except USER_ERRORS as e:
        text = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message held
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
