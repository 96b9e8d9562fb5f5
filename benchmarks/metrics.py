"""OOD metrics with OpenOOD's definitions, so numbers match with or without OpenOOD.

Conventions are OpenOOD's (``openood/evaluators/metrics.py``): ``conf`` is higher for ID,
OOD samples carry label ``-1`` and are the positive class; FPR is read at the first ROC point
whose TPR (of OOD detection on ``-conf``) reaches 95%; AUPR-In/Out integrate scikit-learn's
precision-recall curves with ``metrics.auc``.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

METRIC_NAMES = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC")


def _check(conf: np.ndarray, label: np.ndarray):
    conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    label = np.asarray(label).reshape(-1)
    if conf.shape != label.shape:
        raise ValueError(f"conf has {conf.size} values but label has {label.size}")
    if not np.isfinite(conf).all():
        raise ValueError("conf holds NaN or inf; every score must be finite")
    n_ood = int((label == -1).sum())
    if n_ood == 0 or n_ood == label.size:
        raise ValueError(f"need both ID (label >= 0) and OOD (label == -1) samples, "
                         f"got {label.size - n_ood} ID and {n_ood} OOD")
    return conf, label


def ood_metrics(conf, label, tpr: float = 0.95) -> Dict[str, float]:
    """FPR@``tpr``, AUROC, AUPR-In, AUPR-Out as fractions in [0, 1], OpenOOD's way."""
    from sklearn import metrics
    conf, label = _check(conf, label)
    ood = (label == -1).astype(np.int64)
    fpr_list, tpr_list, _ = metrics.roc_curve(ood, -conf)
    fpr = fpr_list[np.argmax(tpr_list >= tpr)]
    p_in, r_in, _ = metrics.precision_recall_curve(1 - ood, conf)
    p_out, r_out, _ = metrics.precision_recall_curve(ood, -conf)
    return {"FPR@95": float(fpr), "AUROC": float(metrics.auc(fpr_list, tpr_list)),
            "AUPR_IN": float(metrics.auc(r_in, p_in)), "AUPR_OUT": float(metrics.auc(r_out, p_out))}


def accuracy(pred, label) -> float:
    """Top-1 accuracy on the ID samples (label != -1)."""
    pred, label = np.asarray(pred).reshape(-1), np.asarray(label).reshape(-1)
    keep = label != -1
    if not keep.any():
        raise ValueError("accuracy needs at least one ID sample (label != -1)")
    return float((pred[keep] == label[keep]).mean())


def compute_all_metrics(conf, label, pred) -> list:
    """``[fpr, auroc, aupr_in, aupr_out, acc]``, the list OpenOOD's function of that name returns."""
    m = ood_metrics(conf, label)
    return [m["FPR@95"], m["AUROC"], m["AUPR_IN"], m["AUPR_OUT"], accuracy(pred, label)]


def id_ood_metrics(id_conf, ood_conf, id_pred=None, id_label=None) -> Dict[str, float]:
    """Metrics in percent for one ID/OOD pair of score arrays (OpenOOD reports x100)."""
    id_conf, ood_conf = np.asarray(id_conf).reshape(-1), np.asarray(ood_conf).reshape(-1)
    conf = np.concatenate([id_conf, ood_conf])
    label = np.concatenate([np.zeros(id_conf.size, np.int64), -np.ones(ood_conf.size, np.int64)])
    out = {k: 100.0 * v for k, v in ood_metrics(conf, label).items()}
    if id_pred is not None and id_label is not None:
        out["ACC"] = 100.0 * accuracy(id_pred, id_label)
    return out


def mean_std(values: Sequence[float]) -> tuple:
    """Mean and sample std (ddof=1; 0 for a single value) of a list of numbers."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0
