"""``um-openood run [--cpu] SCRIPT ARGS``: an OpenOOD script as ``__main__``, um/umap registered.

A script that reads its config like main.py has it read and checked first (OpenOOD's own
reader, then the um / umap options, the checkpoint and the data paths), before the script
makes its output folder.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys

from .common import CommandError, check_device, error


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="run an OpenOOD script with um/umap registered")
    run.add_argument("--cpu", action="store_true",
                     help="make OpenOOD's .cuda() calls no-ops (machines without a GPU)")
    run.add_argument("script", help="e.g. main.py or scripts/eval_ood.py")
    run.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script unchanged")


def prepare_run(cpu: bool = False) -> None:
    """Register um/umap with OpenOOD and, with ``cpu``, make its ``.cuda()`` calls no-ops."""
    import um_plugin.openood  # noqa: F401  registers on import (OpenOOD is optional)
    if cpu:
        from um_plugin.openood.cpu import enable_cpu_fallback
        enable_cpu_fallback()


def run_script(script: str, args: list, cpu: bool = False) -> None:
    """Run an OpenOOD script as ``__main__`` in this process, plug-in registered."""
    if not os.path.isfile(script):
        raise FileNotFoundError(f"script {script!r} not found (cwd {os.getcwd()!r}); run from "
                                "your OpenOOD checkout or pass the script's path")
    prepare_run(cpu)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script` does
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def check(args) -> None:
    """The script exists, a device is there, and its config (main.py's kind) is sound."""
    if not os.path.isfile(args.script):
        raise ValueError(f"script {args.script!r} not found (cwd {os.getcwd()!r}); run from "
                         "your OpenOOD checkout or pass the script's path")
    check_device(args.cpu)
    prepare_run(args.cpu)
    from um_plugin.openood.training.launching import plan_launch
    from um_plugin.openood.training.script_config import check_script_config
    # --num_gpus / --num_machines / --dist_url: checked here, run through OpenOOD's launch
    args.args, args.launch_plan = plan_launch(args.script, args.args, cpu=args.cpu)
    check_script_config(args.script, args.args)


def run(args) -> int:
    """The script's own errors are its own; a route's stop (e.g. the fit check) is one line,
    exit 2; a rank that raised or died is one line, exit 1 (the launcher stopped the others)."""
    from um_plugin.openood.settings.options import RouteStop
    from um_plugin.openood.training.launching import RanksFailed, launching
    try:
        with launching(args.launch_plan):
            run_script(args.script, args.args, cpu=args.cpu)
    except RouteStop as exc:
        raise CommandError(str(exc)) from None
    except RanksFailed as exc:
        print(file=sys.stderr)  # a stopped rank's progress bar may have left a line open
        error(str(exc))
        return 1
    return 0
