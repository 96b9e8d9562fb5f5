"""um-openood: run OpenOOD's own scripts unchanged with UM / UMAP registered.

    um-openood run [--cpu] main.py --config ... train_umap.yml ...
    um-openood run [--cpu] scripts/eval_ood.py --root results/... --postprocessor umap_ebo
    um-openood install-configs <OpenOOD>/configs      # copy our YAMLs into OpenOOD's tree
    um-openood configs                                # print where the shipped YAMLs are
    um-openood dataset-config NAME --data-root DIR --num-classes N --image-size S --out FILE
    um-openood eval --root results/<exp> --postprocessor msp,ebo [--benchmark FILE] ...
    um-openood gate leaderboard.csv (--baseline stored.csv | --versus MODEL) [--tolerance 1]

Every argument is checked before any work; a bad one ends the command with one line
"um-openood: error: ..." and exit code 2 (Ctrl-C: one line, exit 130). For a script that
reads its config like main.py, that includes the config: OpenOOD's own reader on the same
arguments, then the um / umap options, before the script creates its output folder.
"""
from __future__ import annotations

import argparse
import sys

from . import configs, dataset_config, eval as eval_verb, gate, install_configs, run
from .common import PROG, CommandError, error

VERBS = {"run": run, "install-configs": install_configs, "configs": configs,
         "dataset-config": dataset_config, "eval": eval_verb, "gate": gate}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in VERBS.values():
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Console-script entry point: parse, check (one line, exit 2), then run."""
    args = build_parser().parse_args(argv)
    verb = VERBS[args.command]
    try:
        try:
            verb.check(args)
        except (ValueError, OSError, RuntimeError, ImportError) as exc:
            return error(str(exc))
        return verb.run(args)
    except CommandError as exc:
        return error(str(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (Ctrl-C); finished work is kept, a rerun picks it up",
              file=sys.stderr)
        return 130
