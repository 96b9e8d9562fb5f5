"""``um-openood gate CSV``: the CI gate on a leaderboard CSV; no torch, no OpenOOD.

Exit codes: 0 passed, 1 a gated metric fell by more than its tolerance, 2 the gate cannot
judge (a bad argument; NaN, inf or a value outside [0, 100]; rows of another benchmark).
"""
from __future__ import annotations

import sys

from .common import CommandError


def add_gate_arguments(p) -> None:
    """The gate's options; ``eval`` takes them too and gates its own rows."""
    p.add_argument("--baseline", metavar="CSV", default=None,
                   help="stored leaderboard.csv; each row is gated against its row there")
    p.add_argument("--versus", metavar="MODEL", default=None,
                   help="gate each row against MODEL's row with the same postprocessor (in "
                        "--baseline when given, else in the same table), e.g. UM vs its base")
    p.add_argument("--metrics", default=None, metavar="COLUMNS",
                   help="gated columns, comma-separated, or all (default near_AUROC, "
                        "far_AUROC, near_FPR@95, far_FPR@95, ID_ACC)")
    p.add_argument("--tolerance", default="1", metavar="POINTS|METRIC=POINTS,...",
                   help="allowed fall in percentage points: one number, or per metric "
                        "(near_AUROC=1,far_FPR@95=2; others keep the bare number, default 1)")
    p.add_argument("--allow-other-data", action="store_true",
                   help="compare rows even when their benchmark identity differs")


def add_parser(sub) -> None:
    gt = sub.add_parser("gate", help="gate a leaderboard.csv against a stored one or a model (CI)",
                        description="Exit 1 with one line per gated metric that fell by more "
                                    "than its tolerance, 0 otherwise, 2 when it cannot judge.")
    gt.add_argument("csv", help="leaderboard.csv of this run")
    add_gate_arguments(gt)


def gate_options(args) -> dict:
    """The parsed --metrics / --tolerance / --versus / --allow-other-data (one-line errors)."""
    from um_plugin.leaderboard.gate import parse_metrics, parse_tolerance
    return dict(metrics=parse_metrics(args.metrics), tolerance=parse_tolerance(args.tolerance),
                versus=args.versus, allow_other_data=args.allow_other_data)


def read_baseline(args):
    if args.baseline is None:
        return None
    from um_plugin.leaderboard.table import read_csv
    return read_csv(args.baseline)


def check(args) -> None:
    if args.baseline is None and args.versus is None:
        raise ValueError("gate needs --baseline CSV or --versus MODEL")
    from um_plugin.leaderboard.table import read_csv
    args.gate_options = gate_options(args)
    args.run_rows, args.baseline_rows = read_csv(args.csv), read_baseline(args)


def report(run_rows, baseline_rows, options) -> int:
    """Print the comparison (stdout) and each failure (stderr); 1 when something fell."""
    from um_plugin.leaderboard.gate import GateRefusal, gate
    try:
        result = gate(run_rows, baseline_rows, **options)
    except GateRefusal as exc:
        raise CommandError(str(exc)) from None
    default, per = options["tolerance"]
    shown = ", ".join([f"{default:g} points"] + [f"{k} {v:g}" for k, v in per.items()])
    print(f"gate (tolerance {shown}):")
    for line in result.comparison + result.notes:
        print(line)
    for line in result.failures:
        print(f"um-openood: gate: {line}", file=sys.stderr)
    print("gate: passed" if result.passed else f"gate: FAILED ({len(result.failures)})")
    return 0 if result.passed else 1


def run(args) -> int:
    return report(args.run_rows, args.baseline_rows, args.gate_options)
