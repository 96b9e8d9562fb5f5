"""Command line of the embedded benchmark: ``python -m benchmarks.embedded --out results/``.

Defaults and help come from :class:`~benchmarks.embedded.config.BenchConfig`; an option left
out keeps its default, ``--quick`` and ``--xi-sweep`` are presets, and an option given
explicitly always wins over a preset.
"""
from __future__ import annotations

import os
import sys

from ..cli import OneLineParser, comma_list, fail, parse
from ..checks import BenchmarkError
from .config import BACKENDS, QUICK, SWEEP, BenchConfig, defaults
from .datasets import MissingDataPackage
from .protocol import run

PROG = "python -m benchmarks.embedded"
# (field, type, nargs): every BenchConfig field the command line sets directly
OPTIONS = (("out", str, None), ("seeds", int, "+"), ("methods", comma_list, None),
           ("scores", comma_list, None), ("sets", comma_list, None), ("epochs", int, None),
           ("lr", float, None), ("batch_size", int, None), ("ft_epochs", int, None),
           ("um_lr", float, None), ("umap_lr", float, None), ("keep_ratio", float, None),
           ("xi_keeps", float, "*"), ("xi_fixed", float, "*"), ("xi_draws", int, None),
           ("n_ood", int, None), ("n_val_ood", int, None), ("backend", str, None),
           ("checkpoint", str, None), ("data_root", str, None), ("threads", int, None))


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Embedded offline OOD benchmark: baseline vs CE "
                      "vs UM vs UMAP on MNIST-5k with letters, animal shapes, textures, photos "
                      "and noise as OOD.")
    known = defaults()
    for name, kind, nargs in OPTIONS:
        default, text = known[name]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        kwargs = {"choices": BACKENDS} if name == "backend" else {}
        p.add_argument("--" + name.replace("_", "-"), type=kind, nargs=nargs, default=None,
                       help=f"{text} (default: {shown})", **kwargs)
    p.add_argument("--xi-sweep", action="store_true", help="the full ξ study (slower): "
                   + "; ".join(f"{k}={v}" for k, v in SWEEP.items()))
    p.add_argument("--quick", action="store_true", help="smoke run of seconds: "
                   + "; ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args) -> BenchConfig:
    """Defaults, then the presets asked for, then every option given explicitly."""
    values = {}
    if args.quick:
        values.update(QUICK)
    if args.xi_sweep:
        values.update(SWEEP)
    values.update({name: getattr(args, name) for name, _, _ in OPTIONS
                   if getattr(args, name) is not None})
    return BenchConfig(**values, progress=not args.no_progress, quick=args.quick)


def main(argv=None) -> int:
    """Entry point: one clear line on bad input (exit 2); results kept on Ctrl-C (exit 130)."""
    args, code = parse(build_parser(), argv)
    if args is None:
        return code
    cfg = config_from_args(args)
    try:
        result = run(cfg)  # validates every field before any work
    except (BenchmarkError, MissingDataPackage) as exc:
        return fail(PROG, str(exc))
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; results so far are in {os.path.abspath(cfg.out)}",
              file=sys.stderr)
        return 130
    with open(os.path.join(os.path.abspath(cfg.out), "summary.md")) as fh:
        print(fh.read())
    print(f"results in {os.path.abspath(cfg.out)} ({result.elapsed_s:.0f} s)")
    return 0
