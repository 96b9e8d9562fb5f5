"""One leaderboard table of every (model, postprocessor) scored, and the CI gate against a stored one.

A row holds OpenOOD's metrics (in percent, as the Evaluator reports them) averaged over the
model's run folders: the near-OOD and far-OOD means first, then ID accuracy, then each OOD set.
The CSV keeps full precision (mean and ``_std`` columns) so a later run can be gated on it; the
markdown shows ``mean ± std``. Plain ``csv``: the gate needs neither OpenOOD nor pandas' parser.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

KEY = ("model", "postprocessor")
TEXT = ("runs", "chosen")  # columns that are not metrics (chosen: a UM sweep's choice)
METRICS = ("AUROC", "FPR@95", "AUPR_IN", "AUPR_OUT")  # OpenOOD's columns, ACC aside
LOWER_IS_BETTER = ("FPR@95",)
STD = "_std"


def metric_of(column: str) -> str:
    """``'near_FPR@95'`` -> ``'FPR@95'``; ``'ID_ACC'`` -> ``'ACC'``."""
    for metric in METRICS + ("ACC",):
        if column == metric or column.endswith("_" + metric):
            return metric
    return column


def higher_is_better(column: str) -> bool:
    return metric_of(column) not in LOWER_IS_BETTER


def sort_columns() -> List[str]:
    """The columns ``--sort-by`` accepts."""
    return [f"{group}_{m}" for group in ("near", "far") for m in METRICS] + ["ID_ACC"]


def row_from_tables(model: str, postprocessor: str, runs: int, mean, std) -> Dict:
    """One leaderboard row from the mean / std tables of ``Evaluator.eval_ood`` (pandas frames
    indexed by OOD set, with ``nearood`` and ``farood`` rows)."""
    row = {"model": model, "postprocessor": postprocessor, "runs": runs}
    order = [("near", "nearood"), ("far", "farood")]
    for metric in METRICS:
        for label, index in order:
            row[f"{label}_{metric}"] = float(mean.loc[index, metric])
            row[f"{label}_{metric}{STD}"] = float(std.loc[index, metric])
    row["ID_ACC"] = float(mean.loc["nearood", "ACC"])
    row[f"ID_ACC{STD}"] = float(std.loc["nearood", "ACC"])
    for index in mean.index:
        if index in ("nearood", "farood"):
            continue
        for metric in METRICS:
            row[f"{index}_{metric}"] = float(mean.loc[index, metric])
            row[f"{index}_{metric}{STD}"] = float(std.loc[index, metric])
    return row


def sort_rows(rows: List[Dict], by: str) -> List[Dict]:
    """Best first by column ``by`` (largest first, smallest for FPR), then by model and name."""
    sign = -1 if higher_is_better(by) else 1

    def key(row):
        value = row.get(by, math.nan)
        return (math.isnan(value), sign * value if not math.isnan(value) else 0.0,
                row["model"], row["postprocessor"])
    return sorted(rows, key=key)


def columns(rows: List[Dict]) -> List[str]:
    """Every column of ``rows`` in first-seen order (rows of other benchmarks may differ)."""
    out: List[str] = []
    for row in rows:
        out += [c for c in row if c not in out]
    return out


def to_csv(rows: List[Dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def to_markdown(rows: List[Dict]) -> str:
    """The paste-ready table: near / far AUROC and FPR@95, ID accuracy, then each set's AUROC."""
    main = ["near_AUROC", "near_FPR@95", "far_AUROC", "far_FPR@95", "ID_ACC"]
    sets = [c for c in columns(rows) if c.endswith("_AUROC") and not c.endswith(STD)
            and c not in main]
    shown = main + sets

    def cell(row, column):
        if column not in row:
            return ""
        return f"{row[column]:.2f} \u00b1 {row.get(column + STD, 0.0):.2f}"

    chosen = ["chosen"] if any(row.get("chosen") for row in rows) else []
    head = ["model", "postprocessor", "runs"] + [c.replace("_", " ", 1) for c in shown] + chosen
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row["model"], row["postprocessor"], str(row["runs"])]
                                       + [cell(row, c) for c in shown]
                                       + [row.get("chosen", "") for _ in chosen]) + " |")
    return "\n".join(lines) + "\n"


def write(rows: List[Dict], out_dir: str) -> Tuple[str, str]:
    """Write ``leaderboard.csv`` and ``leaderboard.md`` into ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = os.path.join(out_dir, "leaderboard.csv"), os.path.join(out_dir, "leaderboard.md")
    with open(paths[0], "w", newline="") as f:
        f.write(to_csv(rows))
    with open(paths[1], "w") as f:
        f.write(to_markdown(rows))
    return paths


class MalformedCSV(ValueError):
    """A leaderboard CSV that cannot be compared (the message is one line)."""


def read_csv(path: str) -> Dict[Tuple[str, str], Dict[str, float]]:
    """A leaderboard CSV as ``{(model, postprocessor): {metric column: value}}`` (``runs`` and
    ``_std`` columns dropped); :class:`MalformedCSV` names what is wrong."""
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            body = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MalformedCSV(f"leaderboard CSV {path!r} cannot be read ({exc})") from None
    if not header or not all(k in header for k in KEY):
        raise MalformedCSV(f"leaderboard CSV {path!r} has no 'model' and 'postprocessor' columns "
                           f"(header {header}); use a leaderboard.csv written by um-openood eval")
    metrics = [c for c in header if c not in KEY + TEXT and not c.endswith(STD)]
    if not metrics:
        raise MalformedCSV(f"leaderboard CSV {path!r} has no metric columns (header {header})")
    out: Dict[Tuple[str, str], Dict[str, float]] = {}
    for line, cells in enumerate(body, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise MalformedCSV(f"leaderboard CSV {path!r} line {line}: {len(cells)} cells, the "
                               f"header has {len(header)}")
        record = dict(zip(header, cells))
        key = (record["model"], record["postprocessor"])
        if key in out:
            raise MalformedCSV(f"leaderboard CSV {path!r} line {line}: row {key} appears twice")
        values = {}
        for column in metrics:
            try:
                values[column] = float(record[column])
            except ValueError:
                raise MalformedCSV(f"leaderboard CSV {path!r} line {line}: {column} is "
                                   f"{record[column]!r}, not a number") from None
        out[key] = values
    if not out:
        raise MalformedCSV(f"leaderboard CSV {path!r} has no rows")
    return out


@dataclass
class GateResult:
    """What :func:`gate` found; ``failures`` empty means the run passes."""
    failures: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    comparison: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def _name(key) -> str:
    return f"{key[0]} / {key[1]}"


def gate(baseline: Dict, run: Dict, tolerance: float) -> GateResult:
    """Compare every metric column of every baseline row with the run's.

    A metric *fell* when it is worse by more than ``tolerance`` points (AUROC, AUPR, ACC lower;
    FPR@95 higher), or is missing or NaN in the run; a baseline row the run lacks fails too.
    Rows only in the run are noted, not gated. The baseline's columns decide what is gated, so
    a trimmed baseline gates fewer metrics."""
    result = GateResult()
    for key in sorted(set(run) - set(baseline)):
        result.notes.append(f"row {_name(key)} is in this run only (not in the baseline); not gated")
    for key in sorted(baseline):
        if key not in run:
            result.failures.append(f"row {_name(key)} is in the baseline only: this run did not "
                                   "score it")
            continue
        falls = {}
        for column, before in baseline[key].items():
            if column not in run[key]:
                result.failures.append(f"{_name(key)}: {column} is in the baseline only")
                continue
            now = run[key][column]
            worse = (before - now) if higher_is_better(column) else (now - before)
            if math.isnan(now) and not math.isnan(before):
                result.failures.append(f"{_name(key)}: {column} is NaN (baseline {before:.2f})")
                continue
            falls[column] = worse
            if worse > tolerance:
                result.failures.append(
                    f"{_name(key)}: {column} fell {worse:.2f} points "
                    f"(baseline {before:.2f}, now {now:.2f}, tolerance {tolerance:g})")
        shown = ", ".join(f"{c} {baseline[key][c]:.2f} -> {run[key][c]:.2f}"
                          for c in ("near_AUROC", "far_AUROC") if c in falls)
        worst = max(falls, key=falls.get) if falls else None
        result.comparison.append(
            f"{_name(key)}: {shown + '; ' if shown else ''}{len(falls)} metrics compared"
            + (f", largest fall {falls[worst]:+.2f} points ({worst})" if worst else ""))
    return result
