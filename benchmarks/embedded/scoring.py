"""Scoring models on the benchmark's tensors: the plug-in's scorers, or OpenOOD's Evaluator.

Runs without OpenOOD on the plug-in's scorers; with OpenOOD installed the reported models are
also scored through OpenOOD's Evaluator on the same data on disk.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import scorers
from ..metrics import id_ood_metrics
from .datasets import ID_NAME, EmbeddedData
from .openood_layout import register_embedded
from .records import SUMMARY_ROWS, Metrics, RawScores, ScoreMetrics
from .training import make_model


def score_all(model: nn.Module, tensors: Dict[str, torch.Tensor], names) -> RawScores:
    """{score: {set: (pred, conf)}} over the given ID / OOD tensors (one forward for logit scores)."""
    out = {name: {} for name in names}
    for key, x in tensors.items():
        for name, (pred, conf) in scorers.score_many(model, x, names).items():
            out[name][key] = (pred.numpy(), conf.numpy().astype(np.float64))
    return out


def metrics_from_scores(scores: RawScores, id_label: np.ndarray,
                        set_split: Dict[str, str]) -> Dict[str, ScoreMetrics]:
    """Per score: metrics per test set, near/far means, ID accuracy, the validation pair.

    Parts whose scores were not computed (a candidate scored on the validation sets only)
    are left empty.
    """
    res = {}
    for name, by_set in scores.items():
        entry = ScoreMetrics()
        if "id_test" in by_set:
            id_pred, id_conf = by_set["id_test"]
            rows = {s: Metrics.from_columns(id_ood_metrics(id_conf, by_set[s][1]))
                    for s in set_split if s in by_set}
            for summary in SUMMARY_ROWS:
                members = [s for s, sp in set_split.items() if f"{sp}ood" == summary and s in rows]
                if members:
                    rows[summary] = Metrics.mean([rows[s] for s in members])
            entry.sets = rows
            entry.acc = 100.0 * float((id_pred == id_label).mean())
        if "id_val" in by_set and "ood_val" in by_set:
            entry.val = Metrics.from_columns(id_ood_metrics(by_set["id_val"][1], by_set["ood_val"][1]))
        res[name] = entry
    return res


def mean_val_auroc(metrics: Dict[str, ScoreMetrics]) -> float:
    """The selection value of a ξ candidate: validation AUROC averaged over the scores."""
    return float(np.mean([m.val.auroc for m in metrics.values()]))


def openood_missing() -> Optional[str]:
    """Why OpenOOD or this project's adapter cannot be imported (one line), or None."""
    try:
        import openood  # noqa: F401
        import um_plugin.openood.registry.datasets  # noqa: F401
        return None
    except Exception as exc:  # noqa: BLE001  any import failure means: score without it
        return " ".join(f"{type(exc).__name__}: {exc}".split())


def openood_available() -> bool:
    """OpenOOD and this project's adapter import."""
    return openood_missing() is None


class OpenOODScorer:
    """Scores models through OpenOOD's Evaluator on the layout registered from ``data``.

    One Evaluator is built (OpenOOD's own ImglistDataset + default preprocessor read the PNGs
    once); its loaders are then materialised as lists of batches, and each (model, score)
    runs OpenOOD's postprocessor ``inference``, ``eval_ood`` and metrics on them. Re-reading
    and re-transforming every PNG for each of the 16 (model, score) pairs per seed cost ~4 s
    each on 2 CPUs and gave the same tensors.
    """

    def __init__(self, data: EmbeddedData, root: str, id_name: str = ID_NAME,
                 progress: bool = False):
        from openood.evaluation_api import Evaluator  # optional dependency
        from um_plugin.openood.cpu import enable_cpu_fallback  # imports OpenOOD too
        if not torch.cuda.is_available():
            enable_cpu_fallback()
        bar = tqdm(total=3, desc="OpenOOD: write images", disable=not progress, leave=False)
        with bar:
            register_embedded(data, root, id_name)
            self.root, self.id_name = root, id_name
            bar.update(1)
            bar.set_description("OpenOOD: build the Evaluator")
            with contextlib.redirect_stdout(io.StringIO()):
                self.ev = Evaluator(make_model(0), id_name=id_name, data_root=root,
                                    config_root=None, batch_size=500, num_workers=0,
                                    postprocessor=scorers.openood_postprocessor("msp", id_name))
            bar.update(1)
            bar.set_description("OpenOOD: read the test images")
            d = self.ev.dataloader_dict
            d["id"]["test"] = self._materialise(d["id"]["test"])
            for split in ("near", "far"):
                for k in list(d["ood"][split]):
                    d["ood"][split][k] = self._materialise(d["ood"][split][k])
            bar.update(1)
        self._fresh = copy.deepcopy((self.ev.scores, self.ev.metrics))

    @staticmethod
    def _materialise(loader):
        return [{"data": b["data"], "label": b["label"]} for b in loader]

    def evaluate(self, model: nn.Module, score: str):
        """OpenOOD's metrics DataFrame (percent) and raw (pred, conf) per set for one score."""
        ev = self.ev
        post = scorers.openood_postprocessor(score, self.id_name)
        post.setup(model, ev.dataloader_dict["id"], ev.dataloader_dict["ood"])
        ev.net, ev.postprocessor = model, post
        ev.scores, ev.metrics = copy.deepcopy(self._fresh)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            df = ev.eval_ood(fsood=False, progress=False)  # eval_acc's bar ignores progress
        raw = {"id_test": ev.scores["id"]["test"][:2]}
        for split in ("near", "far"):
            for k, v in ev.scores["ood"][split].items():
                raw[k] = v[:2]
        return df, raw

    @staticmethod
    def table(df) -> ScoreMetrics:
        """OpenOOD's DataFrame as a record: its rows, and its ACC column (one ID accuracy)."""
        return ScoreMetrics(sets={row: Metrics.from_columns(df.loc[row]) for row in df.index},
                            acc=float(df["ACC"].iloc[0]))
