"""The network states of a UM sweep, switched by OpenOOD's own ``hyperparam_search``.

OpenOOD's search calls ``set_hyperparam(combination)`` and then scores the ID and OOD
validation splits with ``inference``; after the last combination it calls ``set_hyperparam``
once more with the winner. :class:`Search` puts the network into the state fine-tuned for each
combination's UM setting: every setting is fine-tuned once, from the same base weights and the
same RNG state (what a plain run would start from), and kept in memory or in ``folder``; a
setting whose fine-tuning stops (fit check, NaN) is marked failed and scores AUROC 0 on the
validation splits without running the network, so OpenOOD's search (``auroc > best``) never
picks it. It also watches the validation scores to keep the table (validation AUROC and ID
accuracy per combination), shows a bar over the combinations and never touches a test split.
"""
from __future__ import annotations

import csv
import io
import os
import random
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch
from openood.evaluators.metrics import compute_all_metrics
from tqdm.auto import tqdm

from um_plugin.core.distributed import is_main_process
from um_plugin.leaderboard.table import write_atomic

from um_plugin.openood.postprocessing.sweep import Setting, Sweep
from um_plugin.openood.settings.options import MethodOptions, RouteStop, XiOptions

FAILURES = (RouteStop, FloatingPointError)  # fit check stops, NaN/inf loss (NonFiniteLossError)


class SweepFailedError(RouteStop):
    """Every setting of the sweep failed to fine-tune; there is nothing to choose from."""


def log(line: str) -> None:
    if is_main_process():
        print(line, flush=True)


def rng_state() -> tuple:
    """Every global RNG a fine-tuning may draw from (augmentation, worker seeds, dropout)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def set_rng_state(state: tuple) -> None:
    cpu, cuda, python, numpy = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(python)
    np.random.set_state(numpy)


@dataclass
class Outcome:
    """What fine-tuning one setting gave: its ξ and state, or why it stopped."""

    xi: Optional[float] = None
    state: object = None          # a state_dict, or the file holding it
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Search:
    """One sweep over one network (see the module docstring)."""

    def __init__(self, sweep: Sweep, model: torch.nn.Module, options: MethodOptions, *,
                 name: str, prepare_xi: Callable[[XiOptions], float],
                 finetune: Callable[[MethodOptions, float], None],
                 setup_base: Callable[[], None], id_val=None, ood_val=None,
                 folder: Optional[str] = None, table_folder: Optional[str] = None):
        self.sweep, self.model, self.options, self.name = sweep, model, options, name
        self._prepare_xi, self._finetune, self._setup_base = prepare_xi, finetune, setup_base
        self._id_val, self._ood_val, self.folder = id_val, ood_val, folder
        self.table_folder = table_folder or folder  # where the table is saved (None: kept)
        self._base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._rng = rng_state()
        self._xi = {}                 # ('estimate',) / ('value', v) -> (ξ, RNG after) or error
        self.outcomes = {}            # Setting -> Outcome
        self.settings = sweep.settings()
        self.rows = []                # one per combination scored, in search order
        self.calls, self.current, self.chosen, self.done = 0, None, None, False
        self.combination = None       # the last combination set, as OpenOOD passed it
        self._id_scores, self._bar = None, None

    # --- cost, switching -----------------------------------------------------------------
    def announce(self) -> None:
        k, n = len(self.settings), self.sweep.combinations
        epochs = sorted({s.epochs or self.options.finetune.epochs for s in self.settings})
        lists = "; ".join(f"{key} {self.sweep.args_dict[key]}" for key in self.sweep.args_dict)
        log(f"[um-plugin] {self.name}: OpenOOD's parameter search over {n} combination(s) "
            f"({lists}) costs {k} fine-tuning(s) of {'/'.join(map(str, epochs))} epoch(s), each "
            f"from the same base weights, kept {'in ' + self.folder if self.folder else 'in memory'}"
            "; chosen by AUROC on the ID and OOD validation splits")

    def select(self, combination: list) -> None:
        """``set_hyperparam``'s UM part: the network into ``combination``'s state."""
        self.calls += 1
        total = self.sweep.combinations
        if self.calls == 1 and is_main_process():
            self._bar = tqdm(total=total, desc=f"{self.name} search", unit="combination")
        if self._bar is not None and self.calls > 1:
            self._bar.update(1)
        self.combination, self._id_scores = list(combination), None
        self._switch(self.sweep.setting(combination[len(self.sweep.base_keys):]))
        if self.calls > total:
            self._finish(list(combination))

    def _switch(self, setting: Setting) -> None:
        if setting == self.current:
            return
        self.current = setting
        outcome = self.outcomes.get(setting)
        if outcome is None:
            outcome = self.outcomes[setting] = self._tune(setting)
            if all(s in self.outcomes and not self.outcomes[s].ok for s in self.settings):
                self._close_bar()
                errors = {self.outcomes[s].error for s in self.settings}
                why = errors.pop() if len(errors) == 1 else "; ".join(
                    f"{s.label()}: {self.outcomes[s].error}" for s in self.settings)
                raise SweepFailedError(f"{self.name}: every one of the {len(self.settings)} "
                                       f"fine-tuning(s) of the sweep stopped, nothing to choose "
                                       f"from ({why})")
        elif outcome.ok:
            self._load(outcome.state)
        if outcome.ok:
            self._setup_base()

    def _restore_base(self) -> None:
        with torch.no_grad():
            self.model.load_state_dict(self._base)

    def _load(self, state) -> None:
        if isinstance(state, str):
            state = torch.load(state, map_location=next(self.model.parameters()).device,
                               weights_only=True)
        with torch.no_grad():
            self.model.load_state_dict(state)

    def _xi_of(self, options: MethodOptions, setting: Setting) -> float:
        """ξ as the plain run with that ξ gets it. A multiple of the estimate is the plain run
        given the multiplied value: its fit check alone reads the training images, so the RNG
        is left after that check, not after the estimate's reads (``auto``'s plain run)."""
        times = setting.xi.times if setting.xi is not None and setting.xi.times else 1.0
        if times == 1.0:
            return self._prepared(options.xi)
        value = self._prepared(options.xi) * times
        return self._prepared(replace(options.xi, value=value))

    def _prepared(self, xi: XiOptions) -> float:
        """ξ as a plain run gets it (fit check included), once per distinct value; the global
        RNG left where that plain run would leave it."""
        key = ("value", xi.value) if xi.value is not None else ("estimate",)
        if key not in self._xi:
            set_rng_state(self._rng)
            try:
                self._xi[key] = (self._prepare_xi(xi), rng_state())
            except FAILURES as exc:
                self._xi[key] = exc
        entry = self._xi[key]
        if isinstance(entry, BaseException):
            raise entry
        value, after = entry
        set_rng_state(after)
        return value

    def _tune(self, setting: Setting) -> Outcome:
        self._restore_base()
        options = setting.options(self.options)
        where = (f"{self.name}: fine-tuning setting {self.settings.index(setting) + 1}/"
                 f"{len(self.settings)} ({setting.label()})")
        xi = None
        try:
            xi = self._xi_of(options, setting)
            log(f"[um-plugin] {where} with xi = {xi:.6g}")
            if setting.xi is not None and setting.xi.times not in (None, 1.0):
                # a multiple of the estimate is not the authors' xi: the run log says so
                options = replace(options, xi=replace(options.xi, value=xi))
            self._finetune(options, xi)
        except FAILURES as exc:
            self._restore_base()
            reason = f"{type(exc).__name__}: {exc}"
            log(f"[um-plugin] {where} FAILED, the search goes on: {reason}")
            return Outcome(xi=xi, error=reason)
        self.model.eval()
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.folder:
            os.makedirs(self.folder, exist_ok=True)
            path = os.path.join(self.folder, f"{self.name}_setting{self.settings.index(setting)}.pt")
            torch.save(state, path + ".tmp")
            os.replace(path + ".tmp", path)
            state = path
        return Outcome(xi=xi, state=state)

    # --- scores ----------------------------------------------------------------------------
    @property
    def failed_now(self) -> bool:
        """Whether the network is in a failed setting (scored without running it)."""
        outcome = self.outcomes.get(self.current)
        return outcome is not None and not outcome.ok

    def failed_scores(self, loader):
        """AUROC 0 by construction: ID scores 0, OOD scores 1, every prediction wrong."""
        n = len(loader.sampler)
        conf = np.full(n, 1.0 if loader is self._ood_val else 0.0, dtype=np.float32)
        return np.full(n, -1, dtype=int), conf, np.zeros(n, dtype=int)

    def observe(self, loader, scores) -> None:
        """Record the validation scores OpenOOD's search computes for this combination."""
        if self.done or self.combination is None:
            return
        if loader is self._id_val:
            self._id_scores = scores
        elif loader is self._ood_val and self._id_scores is not None:
            id_pred, id_conf, id_gt = self._id_scores
            ood_pred, ood_conf, ood_gt = scores
            label = np.concatenate([id_gt, -1 * np.ones_like(ood_gt)])
            metrics = compute_all_metrics(np.concatenate([id_conf, ood_conf]), label,
                                          np.concatenate([id_pred, ood_pred]))
            outcome = self.outcomes[self.current]
            self.rows.append(dict(combination=list(self.combination), xi=outcome.xi,
                                  auroc=100 * metrics[1], id_acc=100 * metrics[4],
                                  error=outcome.error))
            self._id_scores = None

    # --- the end -----------------------------------------------------------------------------
    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _finish(self, combination: list) -> None:
        first = not self.done
        self.done, self.chosen = True, combination
        self._close_bar()
        if first:
            log(self.table())
        else:  # OpenOOD's main.py evaluator sets each tied best in turn; the last one stays
            log(f"[um-plugin] {self.name}: the network is now at {self.describe(combination)}")
        if self.table_folder:
            path = self.save(os.path.join(self.table_folder, f"{self.name}_search.csv"))
            if first:
                log(f"[um-plugin] {self.name}: search table saved to {path}")

    def describe(self, combination: list) -> str:
        keys = list(self.sweep.args_dict)
        return ", ".join(f"{short(k)}={v}" for k, v in zip(keys, combination))

    def table_rows(self) -> list:
        """The table as dicts: each combination's values, ξ, validation AUROC / ID accuracy (%),
        status, and whether it is the one chosen."""
        keys = [short(k) for k in self.sweep.args_dict]
        out = []
        for row in self.rows:
            record = dict(zip(keys, row["combination"]))
            record.update(xi=row["xi"], val_AUROC=None if row["error"] else row["auroc"],
                          val_ID_ACC=None if row["error"] else row["id_acc"],
                          status="ok" if row["error"] is None else f"failed: {row['error']}",
                          chosen=row["combination"] == self.chosen)
            out.append(record)
        return out

    def table(self) -> str:
        """The search's table as printed."""
        rows = self.table_rows()
        if not rows:
            return f"[um-plugin] {self.name}: the search scored no combination on the validation splits"
        head = list(rows[0])
        cells = [[_cell(r[c], c) for c in head] for r in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
        line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()
        chosen = self.describe(self.chosen) if self.chosen else "none"
        return "\n".join([f"[um-plugin] {self.name} parameter search (validation splits); "
                          f"chosen: {chosen}", line(head)] + [line(c) for c in cells])

    def save(self, path: str) -> str:
        return save_table(path, self.table_rows())


def save_table(path: str, rows: list) -> str:
    """The table (:meth:`Search.table_rows`, perhaps with a ``run`` column) as a CSV file,
    written atomically as the leaderboard is."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    names = []
    for row in rows:
        names += [k for k in row if k not in names]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names or ["status"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, buffer.getvalue())


def short(key: str) -> str:
    """``'loss_constraint_list'`` -> ``'loss_constraint'`` (OpenOOD's lists end in _list)."""
    return key[:-len("_list")] if key.endswith("_list") else key


def _cell(value, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "*" if value else ""
    if column.startswith("val_"):
        return f"{value:.2f}"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
