"""What ``um-openood eval`` says about a UM sweep: the leaderboard row's ``chosen`` column, the
search tables beside the OOD CSVs, and the ``--sweep`` flag.

:func:`um_plugin.openood.evaluation.evaluate.score_one` leaves each run's choice and table on the metrics
table it returns (``table.attrs['chosen']`` / ``['search_table']``); these helpers read them.
The flag's lists are checked against each postprocessor's config by
:func:`um_plugin.openood.evaluation.postprocessor_config.resolve`, which also puts them in the config hash.
"""
from __future__ import annotations

from typing import List

from um_plugin.openood.postprocessing.search import save_table
from um_plugin.openood.postprocessing.sweep import parse_flag
from um_plugin.openood.registry.names import is_method_name


def chosen_text(values: dict) -> str:
    """``{'loss_constraint': '2x', 'xi': 0.41}`` -> ``'loss_constraint=2x (xi 0.41)'``."""
    xi = values.get("xi")
    text = ", ".join(f"{k}={v}" for k, v in values.items() if k != "xi")
    return text + (f" (xi {xi:.6g})" if xi is not None else "")


def chosen_column(per_run: list) -> str:
    """What a leaderboard row says was chosen over its runs: one text when every run chose the
    same values, else each run's in order (``run 1: ...; run 2: ...``); '' without a sweep."""
    texts = [chosen_text(v) for v in per_run if v]
    if not texts:
        return ""
    if len(set(texts)) == 1 and len(texts) == len(per_run):
        return texts[0]
    return "; ".join(f"run {i + 1}: {chosen_text(v) if v else '-'}" for i, v in enumerate(per_run))


def add_chosen(row: dict, tables: List) -> dict:
    """Add the ``chosen`` column to a leaderboard row when its runs searched UM settings."""
    text = chosen_column([t.attrs.get("chosen") or {} for t in tables])
    if text:
        row["chosen"] = text
    return row


def save_search_tables(path: str, tables: List):
    """Every run's search table in one CSV (a ``run`` column first); None without a search."""
    rows = [{"run": i + 1, **r} for i, t in enumerate(tables)
            for r in t.attrs.get("search_table") or []]
    return save_table(path, rows) if rows else None


def sweep_from_flags(flags: List[str], names: List[str]) -> dict:
    """``--sweep KEY=V1,V2`` flags as one dict (``{}`` without any); a key given twice, or a
    flag with none of our postprocessors in ``names`` to apply to, is refused in one line."""
    sweep = {}
    for text in flags:
        item = parse_flag(text)
        if set(item) & set(sweep):
            raise ValueError(f"--sweep {text!r}: {next(iter(item))} is given twice")
        sweep.update(item)
    if sweep and not any(is_method_name(n) for n in names):
        raise ValueError(f"--sweep applies to um_*/umap_* postprocessors; --postprocessor "
                         f"{','.join(names)} has none")
    return sweep
