"""Typed records the embedded benchmark's stages pass to each other (and write as JSON).

Names of sets, scores and methods stay dictionary keys (they are data); everything with a
fixed shape is a dataclass, so the report and the plots read fields, not string paths.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from .config import BenchConfig

# (column name OpenOOD and the CSVs use, field name)
METRIC_COLUMNS = (("FPR@95", "fpr95"), ("AUROC", "auroc"), ("AUPR_IN", "aupr_in"),
                  ("AUPR_OUT", "aupr_out"))
SUMMARY_ROWS = ("nearood", "farood")

# score name -> set name -> (pred, conf): raw scorer output, never written as JSON
RawScores = Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray]]]


@dataclass
class Metrics:
    """OOD metrics of one ID/OOD pair, in percent (OpenOOD's definitions)."""

    fpr95: float
    auroc: float
    aupr_in: float
    aupr_out: float

    @classmethod
    def from_columns(cls, row) -> "Metrics":
        """From anything indexable by OpenOOD's column names (a dict, a DataFrame row)."""
        return cls(**{name: float(row[col]) for col, name in METRIC_COLUMNS})

    @classmethod
    def mean(cls, items: List["Metrics"]) -> "Metrics":
        return cls(**{name: float(np.mean([getattr(m, name) for m in items]))
                      for _, name in METRIC_COLUMNS})

    def get(self, column: str) -> float:
        """The value under OpenOOD's column name (``'FPR@95'``, ``'AUROC'``, ...)."""
        return getattr(self, dict(METRIC_COLUMNS)[column])


@dataclass
class ScoreMetrics:
    """One model under one score: per test set (and near/far means), ID accuracy, val pair."""

    sets: Dict[str, Metrics] = field(default_factory=dict)
    acc: Optional[float] = None
    val: Optional[Metrics] = None


@dataclass
class FinetuneRecord:
    """Per-epoch objective and accuracy of one CE / UM / UMAP fine-tune, with its ξ."""

    loss: List[float]
    acc: List[float]
    xi: float


@dataclass
class Candidate:
    """One ξ candidate of UM or UMAP: how it scored, and the val AUROC that ranks it."""

    label: str
    xi: float
    metrics: Dict[str, ScoreMetrics]
    history: FinetuneRecord
    val_auroc: float


@dataclass
class ModelResult:
    """A reported model (baseline, CE, or the chosen UM / UMAP candidate)."""

    metrics: Dict[str, ScoreMetrics]
    history: Optional[FinetuneRecord] = None
    xi: Optional[float] = None
    xi_label: Optional[str] = None
    val_auroc: Optional[float] = None


@dataclass
class XiEstimateRecord:
    keep_ratio: float
    xi: float
    draws: List[float]
    std: float


@dataclass
class EpochLog:
    epoch: int
    loss: float
    train_acc: float


@dataclass
class StageScore:
    """One score of one base-training epoch: val AUROC, ID accuracy, AUROC per row."""

    val_auroc: float
    acc: float
    auroc: Dict[str, float]


@dataclass
class StagePoint:
    epoch: int
    scores: Dict[str, StageScore]


@dataclass
class OpenOODResult:
    """OpenOOD's own table for one model and score, and how far its scores are from ours."""

    table: ScoreMetrics
    max_abs_score_diff_vs_plugin: float


@dataclass
class SeedResult:
    seed: int
    timing_s: Dict[str, float] = field(default_factory=dict)
    train_log: List[EpochLog] = field(default_factory=list)
    train_acc_final: float = float("nan")
    final_stage_reached: bool = False
    stage: List[StagePoint] = field(default_factory=list)
    models: Dict[str, ModelResult] = field(default_factory=dict)
    sweeps: Dict[str, List[Candidate]] = field(default_factory=dict)
    xi_estimates: List[XiEstimateRecord] = field(default_factory=list)
    openood: Dict[str, Dict[str, OpenOODResult]] = field(default_factory=dict)

    def table(self, method: str, score: str, source: str) -> ScoreMetrics:
        """The metrics reported for one method and score: OpenOOD's table or the plug-in's."""
        if source == "openood" and self.openood:
            return self.openood[method][score].table
        return self.models[method].metrics[score]


@dataclass
class DataSizes:
    train: int
    val: int
    test: int
    ood: Dict[str, int]
    ood_val: int


@dataclass
class BenchResult:
    """The whole run; ``hist`` (raw scores of the first seed, for histograms) is not saved."""

    config: BenchConfig
    backend: str
    data: DataSizes
    seeds: Dict[int, SeedResult] = field(default_factory=dict)
    elapsed_s: float = 0.0
    interrupted: bool = False
    hist: Dict[str, RawScores] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        out = asdict(replace(self, hist={}))
        del out["hist"]
        out["seeds"] = {str(k): v for k, v in out["seeds"].items()}
        return out
