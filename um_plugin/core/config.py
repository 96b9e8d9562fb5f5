"""The settings of a UM / UMAP run: the one place that owns their defaults and their rules.

The defaults are what the authors' code runs (github.com/ZFancy/Unleashing-Mask: ``args.py``,
``get_optimizer``, ``cosine_lr``, the CIFAR configs): SGD with momentum 0.9 and **no** Nesterov,
weight decay 1e-4, lr 0.1 decayed by a cosine **once per epoch** (epoch ``e`` of ``E`` runs at
``0.5·(1 + cos(π·e/E))·lr``, the last at about 2.5e-4·lr for E = 100), 100 epochs, UMAP keep
ratio 0.8 with the weights frozen. The paper's text says "SGD with Nesterov momentum"; the code
never sets it. ``nesterov=True, lr_schedule="step"`` is the paper's wording with a per-step
cosine (smoother for short runs), a named alternative, not the authors' setting. Every caller
(core, OpenOOD adapter, benchmarks) builds a :class:`FinetuneConfig`; nobody retypes a default
or re-validates a value. The rules of the values a run takes besides the config (``xi``, the
keep ratio and threshold of a mask) live here too, so this module imports no other module of
the core and every other module takes its rules from it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Real
from typing import Optional

import torch

MODES = ("um", "umap")
THRESHOLDS = ("layer", "global")  # one top-k per layer (the authors'), or one over all layers
OFFICIAL_UMAP_KEEP_RATIO = 0.8
PRECISIONS = ("fp32", "bf16", "fp16")
# 'epoch': the authors' cosine_lr, the lr set once at the start of each epoch;
# 'step': the same cosine evaluated at every optimisation step (OpenOOD's trainers do this)
LR_SCHEDULES = ("epoch", "step")
# the loss on a second stream of auxiliary outliers, added to the constrained ID loss (the
# authors' main_OE.py): none, outlier exposure ('oe') or the energy margins ('energy')
OUTLIER_LOSSES = ("none", "oe", "energy")
# The loss is float32 (autocast computes cross-entropy in float32 too): with xi above half its
# largest value, |beta * CE - xi| + xi overflows to inf, so no step could ever be taken.
XI_MAX = float(torch.finfo(torch.float32).max) / 2


def _number(name: str, value, rule: str, ok) -> float:
    """``value`` as a float, or a ValueError saying ``name must be a finite number <rule>``; a
    tensor must hold a single such number."""
    if isinstance(value, torch.Tensor) and (value.numel() != 1 or value.dtype == torch.bool
                                            or value.dtype.is_complex):
        shown = f" {value.tolist()}" if value.numel() <= 8 else ""
        raise ValueError(f"{name} must be a single finite number {rule}, got a {value.dtype} "
                         f"tensor of shape {tuple(value.shape)}{shown}")
    if isinstance(value, bool) or not isinstance(value, (Real, torch.Tensor)):
        raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not ok(number):
        raise ValueError(f"{name} must be a finite number {rule}, got {number!r}")
    return number


def check_integer(name: str, value, minimum: int | None = None) -> int:
    """Return ``value``, or raise naming it: an int (not a bool), at least ``minimum`` if given."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None
                                                                 and value < minimum):
        rule = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return value


def check_flag(name: str, value) -> bool:
    """Return ``value``, or raise naming it: True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value, choices: tuple, meaning: str = "") -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming ``name`` and the choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}{meaning}, got {value!r}")


def check_layer_names(name: str, value) -> Optional[tuple]:
    """``value`` as a tuple of module names, or None; raise naming ``name`` otherwise."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(
            isinstance(i, str) and i for i in items):
        raise ValueError(f"{name} must be null or a non-empty list of module names (e.g. "
                         f"['layer1.0.conv1', 'fc']), got {value!r}")
    return tuple(items)


def validate_threshold(threshold) -> str:
    """Return ``threshold``, or raise naming it: one of :data:`THRESHOLDS`."""
    check_choice("threshold", threshold, THRESHOLDS)
    return threshold


def validate_keep_ratio(keep_ratio) -> float:
    """Return the keep ratio as a float, or raise naming it: it must lie in (0, 1]."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, Real):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}")
    value = float(keep_ratio)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"keep_ratio must be in (0, 1] (fraction of weights kept), got {value!r}")
    return value


def validate_xi(xi) -> float:
    """Return ``xi`` as a float, or raise naming it: a finite number in ``[0, XI_MAX]``.

    ``XI_MAX`` (about 1.7e38) is half of float32's largest value: beyond it the objective
    ``|beta * CE - xi| + xi``, computed in float32, is inf whatever the model does.
    """
    return _number("loss constraint xi", xi,
                   f">= 0 and <= {XI_MAX:.4g} (beyond that the float32 loss "
                   "|beta*CE - xi| + xi overflows)", lambda v: 0 <= v <= XI_MAX)


def validate_beta(beta) -> float:
    """Return ``beta`` as a float, or raise naming it: beta must be a finite number > 0."""
    return _number("loss scale beta", beta, "> 0", lambda v: v > 0)


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
    include: Optional[tuple] = None  # UMAP: names of the layers masked; others stay dense (None: all)
    outlier_loss: str = "none"   # 'oe' / 'energy': a loss on an outlier loader (core/outliers.py)
    lambda_oe: float = 0.5       # 'oe': its weight (the authors' 0.5, OpenOOD's lambda_oe)
    energy_beta: float = 0.1     # 'energy': weight of the two squared hinges (the authors' 0.1)
    m_in: float = -25.0          # 'energy': ID energies above m_in are penalised
    m_out: float = -7.0          # 'energy': outlier energies below m_out are penalised

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_integer("epochs", self.epochs, 1)
        self.lr = _number("lr", self.lr, "> 0", lambda v: v > 0)
        self.momentum = _number("momentum", self.momentum, "in [0, 1)", lambda v: 0 <= v < 1)
        self.weight_decay = _number("weight_decay", self.weight_decay, ">= 0", lambda v: v >= 0)
        self.min_lr = _number("min_lr", self.min_lr, "in [0, lr]", lambda v: 0 <= v <= self.lr)
        for name in ("nesterov", "freeze_weights", "progress"):
            check_flag(name, getattr(self, name))
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0; set nesterov=False or a momentum "
                             "in (0, 1)")
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES,
                     " ('epoch': the authors' per-epoch cosine; 'step': per step)")
        validate_threshold(self.threshold)
        self.keep_ratio = validate_keep_ratio(self.keep_ratio)
        self.beta = validate_beta(self.beta)
        check_integer("seed", self.seed)
        check_choice("precision", self.precision, PRECISIONS)
        self.include = check_layer_names("include", self.include)
        check_choice("outlier_loss", self.outlier_loss, OUTLIER_LOSSES,
                     " ('oe': outlier exposure; 'energy': energy margins; both need an outlier "
                     "loader)")
        self.lambda_oe = _number("lambda_oe", self.lambda_oe, ">= 0", lambda v: v >= 0)
        self.energy_beta = _number("energy_beta", self.energy_beta, ">= 0", lambda v: v >= 0)
        self.m_in = _number("m_in", self.m_in, "(an energy, e.g. -25)", lambda v: True)
        self.m_out = _number("m_out", self.m_out, "(an energy, e.g. -7)", lambda v: True)

    @classmethod
    def from_saved(cls, values: dict) -> "FinetuneConfig":
        """The config a checkpoint recorded (``asdict`` of one), checked like any other."""
        return cls(**values)

    def differences(self, other: "FinetuneConfig") -> list[str]:
        """Fields (progress aside) whose values differ, as ``'name: mine vs theirs'``."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{f.name}: {mine[f.name]!r} vs {theirs[f.name]!r}" for f in fields(self)
                if f.name != "progress" and mine[f.name] != theirs[f.name]]
