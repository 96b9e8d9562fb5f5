"""The settings of a UM / UMAP run: the one place that owns their defaults and their rules.

The defaults are what the authors' code runs (github.com/ZFancy/Unleashing-Mask: ``args.py``,
``get_optimizer``, ``cosine_lr``, the CIFAR configs): SGD with momentum 0.9 and **no** Nesterov,
weight decay 1e-4, lr 0.1 decayed by a cosine **once per epoch** (epoch ``e`` of ``E`` runs at
``0.5·(1 + cos(π·e/E))·lr``, the last at about 2.5e-4·lr for E = 100), 100 epochs, UMAP keep
ratio 0.8 with the weights frozen. The paper's text says "SGD with Nesterov momentum"; the code
never sets it. ``nesterov=True, lr_schedule="step"`` is the paper's wording with a per-step
cosine (smoother for short runs), a named alternative, not the authors' setting. Every caller
(core, OpenOOD adapter, benchmarks) builds a :class:`FinetuneConfig`; nobody retypes a default
or re-validates a value.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Real

from .masks import THRESHOLDS, validate_keep_ratio
from .objective import validate_beta

MODES = ("um", "umap")
OFFICIAL_UMAP_KEEP_RATIO = 0.8
PRECISIONS = ("fp32", "bf16", "fp16")
# 'epoch': the authors' cosine_lr, the lr set once at the start of each epoch;
# 'step': the same cosine evaluated at every optimisation step (OpenOOD's trainers do this)
LR_SCHEDULES = ("epoch", "step")


def _number(name: str, value, rule: str, ok) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or not ok(value):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return float(value)


def _integer(name: str, value, rule: str, ok) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return value


@dataclass
class FinetuneConfig:
    """Everything a UM/UMAP run needs to know; plain data, validated on creation."""

    mode: str = "um"
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False       # the authors' code (the paper's text says Nesterov)
    lr_schedule: str = "epoch"   # the authors' per-epoch cosine; 'step' decays every step
    keep_ratio: float = OFFICIAL_UMAP_KEEP_RATIO
    threshold: str = "layer"
    freeze_weights: bool = True  # UMAP: learn the mask only (official CIFAR-10); False trains both
    beta: float = 1.0
    min_lr: float = 0.0
    seed: int = 0                # UMAP: mask-score initialisation
    precision: str = "fp32"      # 'bf16' / 'fp16' run forward and loss under torch.autocast
    progress: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        _integer("epochs", self.epochs, "a positive integer", lambda v: v >= 1)
        self.lr = _number("lr", self.lr, "a finite number > 0", lambda v: v > 0)
        self.momentum = _number("momentum", self.momentum, "a number in [0, 1)",
                                lambda v: 0 <= v < 1)
        self.weight_decay = _number("weight_decay", self.weight_decay, "a finite number >= 0",
                                    lambda v: v >= 0)
        self.min_lr = _number("min_lr", self.min_lr, "a finite number in [0, lr]",
                              lambda v: 0 <= v <= self.lr)
        for name in ("nesterov", "freeze_weights", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0; set nesterov=False or a momentum "
                             "in (0, 1)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES} ('epoch': the authors' "
                             f"per-epoch cosine; 'step': per step), got {self.lr_schedule!r}")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {self.threshold!r}")
        self.keep_ratio = validate_keep_ratio(self.keep_ratio)
        self.beta = validate_beta(self.beta)
        _integer("seed", self.seed, "an integer", lambda v: True)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def from_saved(cls, values: dict) -> "FinetuneConfig":
        """The config a checkpoint recorded. One written before ``lr_schedule`` existed ran the
        per-step cosine, so it resumes as ``'step'``."""
        return cls(**{"lr_schedule": "step", **values})

    def differences(self, other: "FinetuneConfig") -> list[str]:
        """Fields (progress aside) whose values differ, as ``'name: mine vs theirs'``."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{f.name}: {mine[f.name]!r} vs {theirs[f.name]!r}" for f in fields(self)
                if f.name != "progress" and mine[f.name] != theirs[f.name]]
