"""``best.ckpt`` of a UM / UMAP run is the final epoch's model, as the authors score it.

OpenOOD's ``BaseRecorder`` writes ``best.ckpt`` whenever ID validation accuracy reaches a new
best, and ``scripts/eval_ood.py`` and every OpenOOD tool read ``best.ckpt``. UM lowers ID
accuracy by design, so that file would be an early, barely changed epoch, not the method the
authors report (their OOD numbers are on the last epoch's model). For the ``um`` / ``umap``
trainers the recorder therefore writes ``best.ckpt`` once, after the final epoch, with that
epoch's model and its sha256 in ``best.ckpt.sha256`` (OpenOOD's own writes of it are skipped),
so a run that stops early leaves no ``best.ckpt`` to be read as finished; OpenOOD's own files
(``best_epoch*_acc*.ckpt``, ``last_epoch*.ckpt``, ``model_epoch*.ckpt``) stay as it writes them.
"""
from __future__ import annotations

import contextlib
import os

import torch
from openood.recorders.base_recorder import BaseRecorder

from um_plugin.leaderboard.runs import write_checksum
from um_plugin.openood.settings.options import TRAINER_NAMES, RouteStop

BEST = "best.ckpt"


class FinalModelRecorder(BaseRecorder):
    """OpenOOD's base recorder, with ``best.ckpt`` the final epoch's model, written once."""

    def save_model(self, net, val_metrics):
        path = os.path.join(self.output_dir, BEST)
        with _skipping(path):
            super().save_model(net, val_metrics)
        if val_metrics["epoch_idx"] == self.config.optimizer.num_epochs:
            tmp = path + ".tmp"
            torch.save(getattr(net, "module", net).state_dict(), tmp)
            os.replace(tmp, path)  # atomic: a killed save leaves no best.ckpt
            write_checksum(path)  # um-openood eval refuses a best.ckpt that no longer matches
            print(f"[um-plugin] wrote {BEST}: the final epoch's model", flush=True)
        self.final_epoch_idx = val_metrics["epoch_idx"]
        self.final_acc = val_metrics["acc"]

    def summary(self):
        super().summary()
        epoch = getattr(self, "final_epoch_idx", None)
        if epoch is not None:
            print(f"[um-plugin] {BEST} holds the final epoch's model (epoch {epoch}, val acc "
                  f"{100 * self.final_acc:.2f}), the model the authors report OOD results on; "
                  f"the highest-val-accuracy one is best_epoch{self.best_epoch_idx}_acc"
                  f"{self.best_acc:.4f}.ckpt", flush=True)


@contextlib.contextmanager
def _skipping(path: str):
    """While OpenOOD's ``save_model`` runs, its ``torch.save`` to ``path`` writes nothing."""
    save = torch.save

    def save_except(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and os.path.abspath(f) == os.path.abspath(path):
            return None
        return save(obj, f, *args, **kwargs)

    torch.save = save_except
    try:
        yield
    finally:
        torch.save = save


def make_get_recorder(openood_get_recorder):
    """Wrap OpenOOD's ``get_recorder``: our trainers (um, umap, um_oe, umap_oe) get the final
    model."""

    def get_recorder(config):
        trainer = config.trainer.name if config.get("trainer") is not None else None
        if trainer not in TRAINER_NAMES:
            return openood_get_recorder(config)
        name = config.recorder.name
        if name != "base":
            raise RouteStop(f"recorder.name: the {trainer} trainer needs recorder 'base' (its "
                             f"best.ckpt is made the final epoch's model), got {name!r}")
        return FinalModelRecorder(config)

    get_recorder.__doc__ = openood_get_recorder.__doc__
    return get_recorder
