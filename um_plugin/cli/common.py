"""What every verb shares: the program name, the one-line error, argparse types, the GPU check.

The verbs import torch, OpenOOD and ``um_plugin.openood`` (which imports OpenOOD) inside the
functions that use them: the parser, ``--help``, ``install-configs``, ``gate`` and the one-line
"OpenOOD is missing" error must not need them.
"""
from __future__ import annotations

import argparse
import math
import sys

PROG = "um-openood"


class CommandError(ValueError):
    """A verb stopped for a reason the user can fix; printed as one line, exit 2."""


def error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def check_device(cpu: bool) -> None:
    """OpenOOD calls ``.cuda()`` unconditionally (its scripts, trainers, Evaluator): without a
    GPU, ``run`` and ``eval`` need ``--cpu``."""
    import torch  # keeps `um-openood --help` fast
    if not cpu and not torch.cuda.is_available():
        raise ValueError("no CUDA GPU is available (torch.cuda.is_available() is False) and "
                         "OpenOOD calls .cuda(); add --cpu to run on the CPU")


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def points(text):
    """argparse type: a number of percentage points >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of points >= 0, got {text!r}")
    return value
