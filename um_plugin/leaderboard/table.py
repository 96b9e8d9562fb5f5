"""One leaderboard table of every (model, postprocessor) scored: rows, CSV / JSON / markdown.

A row holds OpenOOD's metrics (in percent, as the Evaluator reports them) averaged over the
model's run folders: the near-OOD and far-OOD means first, then ID accuracy, then each OOD set,
then what the row was made from (:mod:`.provenance`). The CSV keeps full precision (mean and
``_std`` columns) so a later run can be gated on it; the markdown shows ``mean ± std``, the std
being the population std over the row's runs. Plain ``csv``: the gate needs neither OpenOOD
nor pandas.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from .provenance import COLUMNS as PROVENANCE

KEY = ("model", "postprocessor")
TEXT = ("runs", "chosen")  # columns that are not metrics (chosen: a UM sweep's choice)
METRICS = ("AUROC", "FPR@95", "AUPR_IN", "AUPR_OUT")  # OpenOOD's columns, ACC aside
LOWER_IS_BETTER = ("FPR@95",)
STD = "_std"
JSON_ONLY = ("checkpoints",)  # the checkpoint paths: in leaderboard.json, not the CSV
STD_NOTE = ("± = population std over the n runs of a row (n = 1: no ±); what each row was "
            "made from (checkpoint sha256s, config, benchmark, versions) is in "
            "leaderboard.csv / leaderboard.json")


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


def is_metric(column: str) -> bool:
    """A metric mean column (not the key, a text column such as ``runs`` / ``chosen``, a
    ``_std`` or a provenance column)."""
    return column not in KEY + TEXT + PROVENANCE + JSON_ONLY and not column.endswith(STD)


def row_from_tables(model: str, postprocessor: str, runs: int, mean, std,
                    provenance=None) -> Dict:
    """One leaderboard row from the mean / std tables of ``Evaluator.eval_ood`` (pandas frames
    indexed by OOD set, with ``nearood`` and ``farood`` rows), plus its provenance fields."""
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
    row.update(provenance or {})
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
    """Every CSV column of ``rows`` in first-seen order, provenance last."""
    out: List[str] = []
    for row in rows:
        out += [c for c in row if c not in out and c not in PROVENANCE + JSON_ONLY]
    return out + [c for c in PROVENANCE if any(c in row for row in rows)]


def to_csv(rows: List[Dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(rows), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def to_json(rows: List[Dict]) -> str:
    return json.dumps({"std": "population std over the runs of a row", "rows": rows}, indent=1,
                      default=str) + "\n"


def to_markdown(rows: List[Dict]) -> str:
    """The paste-ready table: near / far AUROC and FPR@95, ID accuracy, then each set's AUROC;
    a line under it says what ± is."""
    main = ["near_AUROC", "near_FPR@95", "far_AUROC", "far_FPR@95", "ID_ACC"]
    sets = [c for c in columns(rows) if c.endswith("_AUROC") and is_metric(c) and c not in main]
    shown = main + sets

    def cell(row, column):
        if column not in row:
            return ""
        if int(row.get("runs", 1)) < 2:
            return f"{row[column]:.2f}"
        return f"{row[column]:.2f} \u00b1 {row.get(column + STD, 0.0):.2f}"

    chosen = ["chosen"] if any(row.get("chosen") for row in rows) else []
    head = ["model", "postprocessor", "runs"] + [c.replace("_", " ", 1) for c in shown] + chosen
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row["model"], row["postprocessor"], str(row["runs"])]
                                       + [cell(row, c) for c in shown]
                                       + [row.get("chosen", "") for _ in chosen]) + " |")
    return "\n".join(lines) + "\n\n" + STD_NOTE + "\n"


def write_atomic(path: str, text: str) -> str:
    """Write ``text`` to ``path`` through a temporary file: a reader never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write(rows: List[Dict], out_dir: str) -> Tuple[str, str, str]:
    """Write ``leaderboard.csv`` / ``.json`` / ``.md`` into ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    return tuple(write_atomic(os.path.join(out_dir, f"leaderboard.{ext}"), render(rows))
                 for ext, render in (("csv", to_csv), ("json", to_json), ("md", to_markdown)))


class MalformedCSV(ValueError):
    """A leaderboard CSV that cannot be compared (the message is one line)."""


@dataclass
class Row:
    """A row read back: metric means (percent) and provenance text."""
    metrics: Dict[str, float]
    provenance: Dict[str, str] = field(default_factory=dict)


def _percent(path, line, column, text) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MalformedCSV(f"leaderboard CSV {path!r} line {line}: {column} is {text!r}, not a "
                           "number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 100.0):
        raise MalformedCSV(f"leaderboard CSV {path!r} line {line}: {column} is {text!r}; a "
                           "leaderboard metric is a finite percentage in [0, 100]")
    return value


def read_csv(path: str) -> Dict[Tuple[str, str], Row]:
    """A leaderboard CSV as ``{(model, postprocessor): Row}`` (``runs`` and ``_std`` columns
    dropped); :class:`MalformedCSV` names what is wrong, NaN / inf / out of [0, 100] included."""
    try:
        with open(path, newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise MalformedCSV(f"leaderboard CSV {path!r} cannot be read ({exc})") from None
    return parse_csv(text, path)


def parse_csv(text: str, path: str) -> Dict[Tuple[str, str], Row]:
    """:func:`read_csv` on the CSV's text (``path`` names it in messages)."""
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        body = list(reader)
    except csv.Error as exc:
        raise MalformedCSV(f"leaderboard CSV {path!r} cannot be read ({exc})") from None
    if not header or not all(k in header for k in KEY):
        raise MalformedCSV(f"leaderboard CSV {path!r} has no 'model' and 'postprocessor' columns "
                           f"(header {header}); use a leaderboard.csv written by um-openood eval")
    metrics = [c for c in header if is_metric(c)]
    if not metrics:
        raise MalformedCSV(f"leaderboard CSV {path!r} has no metric columns (header {header})")
    out: Dict[Tuple[str, str], Row] = {}
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
        out[key] = Row({c: _percent(path, line, c, record[c]) for c in metrics},
                       {c: record[c] for c in PROVENANCE if c in record})
    if not out:
        raise MalformedCSV(f"leaderboard CSV {path!r} has no rows")
    return out
