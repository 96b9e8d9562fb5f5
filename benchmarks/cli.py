"""Argument parsing shared by the benchmark entry points: every error is one line, exit code 2."""
from __future__ import annotations

import argparse
import sys
from typing import List

from .checks import BenchmarkError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints only ``<prog>: error: ...`` (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def comma_list(text: str) -> List[str]:
    """``'a, b,,c'`` -> ``['a', 'b', 'c']``."""
    return [v.strip() for v in text.split(",") if v.strip()]


def parse(parser: argparse.ArgumentParser, argv):
    """``parse_args`` that returns the exit code instead of raising (``None`` when parsed)."""
    try:
        return parser.parse_args(argv), None
    except SystemExit as exc:
        return None, exc.code if isinstance(exc.code, int) else 2


def fail(prog: str, message: str) -> int:
    """Print one error line and give the exit code for bad input."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def run_main(prog: str, parser: argparse.ArgumentParser, argv, build, run) -> int:
    """A benchmark's entry point: parse, ``build`` the config, ``run`` it, print its table.

    A bad argument, or a :class:`BenchmarkError` raised while building or running, is one
    line ``<prog>: error: ...`` and exit code 2.
    """
    args, code = parse(parser, argv)
    if args is None:
        return code
    try:
        result = run(build(args))
    except BenchmarkError as exc:
        return fail(prog, str(exc))
    print(result["table"])
    return 0
