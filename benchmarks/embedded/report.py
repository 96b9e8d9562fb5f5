"""The embedded benchmark's outputs: results.json, summary tables (CSV, Markdown), plots."""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from um_plugin.core import MODES

from ..metrics import mean_std
from ..scorers import SCORES
from .config import METHODS
from .records import METRIC_COLUMNS, SUMMARY_ROWS, BenchResult

COLUMNS = tuple(col for col, _ in METRIC_COLUMNS) + ("ACC",)


@dataclass
class SummaryRow:
    """One method, score and row (a test set or near/far mean): mean and std over seeds."""

    method: str
    score: str
    set: str
    split: str
    n_seeds: int
    mean: Dict[str, float] = field(default_factory=dict)  # by COLUMNS name
    std: Dict[str, float] = field(default_factory=dict)

    def csv_row(self) -> dict:
        row = {"method": self.method, "score": self.score, "set": self.set, "split": self.split,
               "n_seeds": self.n_seeds}
        for col in COLUMNS:
            row[f"{col}_mean"], row[f"{col}_std"] = self.mean[col], self.std[col]
        return row


def summarize(result: BenchResult, set_split: Dict[str, str]) -> List[SummaryRow]:
    """Long-format rows over the completed seeds, from OpenOOD's tables or the plug-in's."""
    seeds = list(result.seeds.values())
    if not seeds:
        return []
    row_names = list(set_split) + [r for r in SUMMARY_ROWS
                                   if any(f"{v}ood" == r for v in set_split.values())]
    rows = []
    for method in result.config.methods:
        if method not in seeds[0].models:
            continue
        for score in result.config.scores:
            tables = [r.table(method, score, result.backend) for r in seeds]
            for name in row_names:
                split = "near" if name == "nearood" or set_split.get(name) == "near" else "far"
                row = SummaryRow(method, score, name, split, len(tables))
                for col in COLUMNS:
                    values = [t.acc if col == "ACC" else t.sets[name].get(col) for t in tables]
                    row.mean[col], row.std[col] = mean_std(values)
                rows.append(row)
    return rows


def _fmt(mu, sd, n, digits=2):
    """``mean ± std`` over n > 1 seeds; one seed has no spread to show, so no ``±``."""
    return f"{mu:.{digits}f} ± {sd:.{digits}f}" if n > 1 else f"{mu:.{digits}f}"


def _spread_note(n: int) -> str:
    """What a table's ``±`` means (``metrics.mean_std``: the sample std, ddof=1)."""
    return (f"mean ± sample std (ddof=1) over the {n} seeds" if n > 1 else
            "one seed: single values, no spread")


def markdown_table(rows: List[SummaryRow], result: BenchResult) -> str:
    """Near/far means per method and score, then per-set AUROC / FPR95, then ξ notes."""
    seeds = list(result.seeds.values())
    lines = [f"Embedded benchmark (MNIST-5k ID), {len(seeds)} seed(s), scored via "
             f"{result.backend}; {_spread_note(len(seeds))}.\n",
             "| method | score | ID acc | near AUROC | near FPR95 | far AUROC | far FPR95 |",
             "|---|---|---|---|---|---|---|"]
    by = {(r.method, r.score, r.set): r for r in rows}
    keys = sorted({(r.method, r.score) for r in rows},
                  key=lambda k: (METHODS.index(k[0]), SCORES.index(k[1])))
    for method, score in keys:
        near, far = by.get((method, score, "nearood")), by.get((method, score, "farood"))
        ref = near or far
        cells = [method, score, _fmt(ref.mean["ACC"], ref.std["ACC"], ref.n_seeds)]
        for r in (near, far):
            cells += ([_fmt(r.mean[c], r.std[c], r.n_seeds) for c in ("AUROC", "FPR@95")]
                      if r else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    sets = [r.set for r in rows if (r.method, r.score) == keys[0] and r.set not in SUMMARY_ROWS]
    lines += ["\nPer set, AUROC / FPR@95:\n", "| method | score | " + " | ".join(sets) + " |",
              "|---|---|" + "---|" * len(sets)]
    for method, score in keys:
        cells = [method, score] + [" / ".join(
            _fmt(r.mean[c], r.std[c], r.n_seeds, digits=1) for c in ("AUROC", "FPR@95"))
            for r in (by[(method, score, s)] for s in sets)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("\n" + "\n".join(_xi_notes(result)))
    return "\n".join(lines) + "\n"


def _xi_notes(result: BenchResult) -> List[str]:
    seeds = list(result.seeds.values())
    notes = []
    for mode in MODES:
        chosen = [(r.models[mode].xi_label, r.models[mode].xi) for r in seeds if mode in r.models]
        if chosen:
            notes.append(f"- {mode}: chosen ξ per seed (on ood.val) = " +
                         ", ".join(f"{v:.4g} ({lab})" for lab, v in chosen))
    ests = [e for r in seeds for e in r.xi_estimates]
    for k in sorted({e.keep_ratio for e in ests}, reverse=True):
        vals = [d for e in ests if e.keep_ratio == k for d in e.draws]
        notes.append(f"- ξ estimate at keep {k:g}: mean {np.mean(vals):.4g}, draws range "
                     f"{min(vals):.4g} – {max(vals):.4g} ({len(vals)} draws over seeds)")
    notes.append("- base model final train accuracy: " +
                 ", ".join(f"{100 * r.train_acc_final:.2f}%" for r in seeds))
    return notes


def sweep_table(result: BenchResult) -> str:
    """Every ξ candidate (mean over seeds): val AUROC that chose it, then test metrics."""
    seeds = list(result.seeds.values())
    lines = []
    for mode in MODES:
        if not seeds or mode not in seeds[0].sweeps:
            continue
        score = next(k for k, v in seeds[0].sweeps[mode][0].metrics.items() if v.sets)
        if not lines:
            xi_head = "ξ (mean ± std)" if len(seeds) > 1 else "ξ"
            over = (f"over {len(seeds)} seeds: ξ as mean ± sample std (ddof=1), the other "
                    "columns as means" if len(seeds) > 1 else "one seed")
            lines += [f"ξ candidates, {over}; selection uses the ood.val column only; test "
                      f"columns use {score}.\n",
                      f"| method | candidate | {xi_head} | val AUROC | near AUROC | near FPR95 "
                      "| far AUROC | far FPR95 | letters FPR95 | animals FPR95 | ID acc |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
        base = [r.models["baseline"].metrics[score] for r in seeds]

        def cells(ms):
            return [f"{np.mean([m.sets[row].get(col) for m in ms]):.2f}" if row in ms[0].sets
                    else "-" for row, col in (("nearood", "AUROC"), ("nearood", "FPR@95"),
                                              ("farood", "AUROC"), ("farood", "FPR@95"),
                                              ("letters", "FPR@95"), ("animals", "FPR@95"))]
        if mode == "um" or "um" not in seeds[0].sweeps:
            lines.append("| baseline | – | – | " + f"{np.mean([m.val.auroc for m in base]):.2f} | "
                         + " | ".join(cells(base)) + f" | {np.mean([m.acc for m in base]):.2f} |")
        for i, entry in enumerate(seeds[0].sweeps[mode]):
            ms = [r.sweeps[mode][i].metrics[score] for r in seeds]
            xs = [r.sweeps[mode][i].xi for r in seeds]
            val = np.mean([r.sweeps[mode][i].val_auroc for r in seeds])
            lines.append(f"| {mode} | {entry.label} | {_fmt(*mean_std(xs), len(xs), 4)} | "
                         f"{val:.2f} | " + " | ".join(cells(ms)) +
                         f" | {np.mean([m.acc for m in ms]):.2f} |")
    return "\n".join(lines) + ("\n" if lines else "")


def write_outputs(result: BenchResult, out: str, set_split: Dict[str, str]) -> None:
    """results.json, summary.csv / .md, one OpenOOD-format CSV per method+score, plots."""
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(result.to_json(), fh, indent=1, default=float)
    rows = summarize(result, set_split)
    if not rows:
        return
    with open(os.path.join(out, "summary.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].csv_row()))
        w.writeheader()
        w.writerows(r.csv_row() for r in rows)
    table = markdown_table(rows, result)
    sweep = sweep_table(result)
    with open(os.path.join(out, "summary.md"), "w") as fh:
        fh.write(table + ("\n" + sweep if sweep else ""))
    os.makedirs(os.path.join(out, "openood_format"), exist_ok=True)
    for method, score in sorted({(r.method, r.score) for r in rows}):
        with open(os.path.join(out, "openood_format", f"{method}_{score}.csv"), "w") as fh:
            fh.write("," + ",".join(COLUMNS) + "\n")
            for r in rows:
                if (r.method, r.score) == (method, score):
                    fh.write(r.set + "," + ",".join(f"{r.mean[c]:.6f}" for c in COLUMNS) + "\n")
    try:
        from . import plots  # matplotlib is optional: tables stand without it
        plots.make_all(result, out, set_split)
    except ImportError as exc:
        print(f"benchmarks.embedded: plots skipped ({exc})", file=sys.stderr)
