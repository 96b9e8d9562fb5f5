"""The CI gate: compare leaderboard rows, metric by metric, with per-metric tolerances.

Each row of this run is compared with a reference row: the baseline CSV's row of the same
(model, postprocessor), or with ``versus`` the row of that model with the same postprocessor
(UM must not fall below its base). Only rows of the same benchmark identity are compared
unless ``allow_other_data``; values that cannot be judged (NaN, inf, outside [0, 100]) were
already refused when the CSV was read (:func:`.table.read_csv`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .table import Row, higher_is_better

DEFAULT_METRICS = ("near_AUROC", "far_AUROC", "near_FPR@95", "far_FPR@95", "ID_ACC")
DEFAULT_TOLERANCE = 1.0


class GateRefusal(ValueError):
    """The gate cannot judge these files as asked (one line; the CLI exits 2)."""


def parse_metrics(text: Optional[str]) -> Optional[Tuple[str, ...]]:
    """``--metrics``: comma-separated columns, ``all`` (None: every column), default the five."""
    if text is None:
        return DEFAULT_METRICS
    names = [n.strip() for n in text.split(",")]
    if names == ["all"]:
        return None
    if not all(names) or len(set(names)) != len(names):
        raise GateRefusal(f"--metrics {text!r}: names must be non-empty and distinct, "
                          f"comma-separated (e.g. {','.join(DEFAULT_METRICS)}, or all)")
    return tuple(names)


def _points(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise GateRefusal(f"--tolerance {what}: must be a number of points >= 0, got {text!r}")
    return value


def parse_tolerance(text) -> Tuple[float, Dict[str, float]]:
    """``--tolerance``: ``2`` (every metric), ``near_AUROC=1,far_FPR@95=2`` (others: 1), or
    both (``2,near_AUROC=1``); returns (default, per-metric)."""
    default, per = DEFAULT_TOLERANCE, {}
    for part in (p.strip() for p in str(text).split(",")):
        if "=" in part:
            column, _, value = part.partition("=")
            column = column.strip()
            if not column or column in per:
                raise GateRefusal(f"--tolerance {text!r}: empty or repeated metric {column!r}")
            per[column] = _points(value.strip(), column)
        else:
            default = _points(part, repr(text))
    return default, per


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


def pairs(run: Dict, baseline: Optional[Dict], versus: Optional[str], result: GateResult):
    """``(label, reference row, run row)`` to compare; rows without a partner go to ``result``."""
    if versus is None:
        if baseline is None:
            raise GateRefusal("the gate needs --baseline CSV or --versus MODEL")
        for key in sorted(set(run) - set(baseline)):
            result.notes.append(f"row {_name(key)} is in this run only (not in the baseline); "
                                "not gated")
        out = []
        for key in sorted(baseline):
            if key not in run:
                result.failures.append(f"row {_name(key)} is in the baseline only: this run "
                                       "did not score it")
            else:
                out.append((_name(key), baseline[key], run[key]))
        return out
    source, where = (baseline, "the baseline") if baseline is not None else (run, "this CSV")
    if not any(model == versus for model, _ in source):
        raise GateRefusal(f"--versus {versus!r}: {where} has no rows of model {versus!r}; its "
                          f"models are {sorted({m for m, _ in source})}")
    out = []
    for key in sorted(k for k in run if k[0] != versus):
        reference = (versus, key[1])
        if reference not in source:
            result.failures.append(f"{_name(key)}: {where} has no row {_name(reference)} to "
                                   "gate it against")
        else:
            out.append((f"{_name(key)} vs {versus}", source[reference], run[key]))
    return out


def _check_identity(label: str, reference: Row, now: Row, allow_other_data: bool,
                    result: GateResult) -> None:
    ours, theirs = now.provenance.get("benchmark", ""), reference.provenance.get("benchmark", "")
    if ours and theirs and ours != theirs:
        if not allow_other_data:
            raise GateRefusal(f"{label}: the rows are of different benchmarks (benchmark "
                              f"{theirs[:12]} vs {ours[:12]}: other image lists or data "
                              "files); pass --allow-other-data to compare them anyway")
        result.notes.append(f"{label}: compared across benchmarks {theirs[:12]} / {ours[:12]} "
                            "(--allow-other-data)")
    elif not (ours and theirs):
        result.notes.append(f"{label}: no benchmark identity recorded in "
                            f"{'both rows' if not (ours or theirs) else 'one row'}; compared "
                            "as given")


def gate(run: Dict[Tuple[str, str], Row], baseline: Optional[Dict[Tuple[str, str], Row]] = None,
         *, tolerance: Tuple[float, Dict[str, float]] = (DEFAULT_TOLERANCE, {}),
         metrics: Optional[Sequence[str]] = DEFAULT_METRICS, versus: Optional[str] = None,
         allow_other_data: bool = False) -> GateResult:
    """Compare every gated metric of each pair of rows (see :func:`pairs`).

    A metric *fell* when it is worse by more than its tolerance (AUROC, AUPR, ACC lower;
    FPR@95 higher) or the run lacks it. ``metrics`` None gates every column of the reference
    row; a named metric no reference row has is refused (:class:`GateRefusal`)."""
    default, per = tolerance
    result = GateResult()
    compared = pairs(run, baseline, versus, result)
    if metrics is not None:
        known = {c for _, reference, _ in compared for c in reference.metrics}
        unknown = [m for m in metrics if m not in known] if compared else []
        if unknown:
            raise GateRefusal(f"--metrics {unknown}: not a column of the reference rows; use "
                              f"some of {sorted(known)} or all")
    gated = set(metrics) if metrics is not None else None
    stray = [m for m in per if gated is not None and m not in gated]
    if stray:
        raise GateRefusal(f"--tolerance names {stray}, which --metrics does not gate "
                          f"({sorted(gated)})")
    for label, reference, now in compared:
        _check_identity(label, reference, now, allow_other_data, result)
        falls = {}
        for column, before in reference.metrics.items():
            if gated is not None and column not in gated:
                continue
            if column not in now.metrics:
                result.failures.append(f"{label}: {column} is in the reference row only")
                continue
            after, allowed = now.metrics[column], per.get(column, default)
            worse = (before - after) if higher_is_better(column) else (after - before)
            falls[column] = worse
            if worse > allowed:
                result.failures.append(f"{label}: {column} fell {worse:.2f} points (reference "
                                       f"{before:.2f}, now {after:.2f}, tolerance {allowed:g})")
        shown = ", ".join(f"{c} {reference.metrics[c]:.2f} -> {now.metrics[c]:.2f}"
                          for c in ("near_AUROC", "far_AUROC") if c in falls)
        worst = max(falls, key=falls.get) if falls else None
        result.comparison.append(
            f"{label}: {shown + '; ' if shown else ''}{len(falls)} metrics compared"
            + (f", largest fall {falls[worst]:+.2f} points ({worst})" if worst else ""))
    return result
