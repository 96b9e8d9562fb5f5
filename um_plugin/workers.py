"""Default data-loader workers: OpenOOD's 4, but no more than the CPUs this process may use.

torch warns (and the extra workers only contend) when a loader starts more worker processes
than the CPUs available, e.g. 4 on a 2-core CI runner. An explicit count is the user's and is
never changed; only defaults go through :func:`default_workers`. No torch import: the CLI
reads it while building its parser.
"""
from __future__ import annotations

import os

OPENOOD_WORKERS = 4  # the Evaluator's and OpenOOD's configs' num_workers


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """OpenOOD's default worker count, capped at :func:`available_cpus`."""
    return min(OPENOOD_WORKERS, available_cpus())
