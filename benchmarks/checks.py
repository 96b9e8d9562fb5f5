"""The checks the benchmarks' configs share, written once: one error class, one message a rule.

Each config's ``validate`` checks every value before any work and raises
:class:`BenchmarkError`, which the entry point prints as one line ``<prog>: error: ...``.
"""
from __future__ import annotations

import math
import os

from um_plugin.core.config import check_integer
from um_plugin.core.paths import probe_write


class BenchmarkError(Exception):
    """A bad argument, missing file or missing package, reported as one line."""


def flag(name: str) -> str:
    """The command-line flag of a config field: ``xi_draws`` -> ``--xi-draws``."""
    return "--" + name.replace("_", "-")


def is_int(value) -> bool:
    """Whether ``value`` passes the core's integer rule (an int, not a bool)."""
    try:
        check_integer("value", value)
    except ValueError:
        return False
    return True


def known(what: str, values, valid) -> list:
    """``values`` without repeats (a repeated name is one entry, not two runs), each valid."""
    values = list(dict.fromkeys(values))
    bad = [v for v in values if v not in valid]
    if bad:
        raise BenchmarkError(f"unknown {what}(s) {bad}; valid: {list(valid)}")
    return values


def count(name: str, value, minimum: int = 1, note: str = "") -> None:
    """``value`` must be an integer >= ``minimum`` (the core's rule, named by the flag)."""
    try:
        check_integer(flag(name), value, minimum)
    except ValueError as exc:
        raise BenchmarkError(f"{exc}{note}") from None


def positive(name: str, value) -> None:
    """``value`` must be a finite number > 0 (a learning rate)."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise BenchmarkError(f"{flag(name)} must be a finite number > 0, got {value!r}")


def core_rule(name: str, check, value) -> None:
    """Apply one of the core's validators: its message names the rule, ours the flag."""
    try:
        check(value)
    except ValueError as exc:
        raise BenchmarkError(f"{flag(name)}: {exc}") from None


def writable_folder(name: str, path: str) -> None:
    """Create the folder ``path`` (for ``--<name>``) now, and fail now if it cannot be written."""
    try:
        probe_write(os.path.join(path, ".write-test"))
    except OSError as exc:
        raise BenchmarkError(f"{flag(name)} folder {path!r} is not writable "
                             f"({exc.strerror})") from None
