"""Read and validate ``trainer_args`` / ``postprocessor_args`` once, with errors naming the key.

OpenOOD hands configs over as loose dicts whose values may arrive as strings from the command
line (``--trainer.trainer_args.loss_constraint 0.3`` keeps the type of the YAML default,
``auto``). Everything downstream gets a typed, checked :class:`MethodOptions` instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Mapping, Optional, Union

THRESHOLDS = ("layer", "global")
MODES = ("um", "umap")


@dataclass(frozen=True)
class MethodOptions:
    """The knobs of UM / UMAP shared by the trainers and the postprocessors."""

    mode: str
    loss_constraint: Union[str, float] = "auto"  # 'auto' (estimate xi) or xi itself
    xi_keep_ratio: float = 0.965                 # weights kept by the random mask estimating xi
    xi_seed: int = 0
    xi_draws: int = 1
    keep_ratio: float = 0.8                      # UMAP: weights kept by the learned mask
    threshold: str = "layer"                     # UMAP: top-k per 'layer' or 'global'
    freeze_weights: bool = True                  # UMAP: learn the mask only
    beta: float = 1.0
    seed: int = 0                                # UMAP: mask-score initialisation
    # postprocessor only (trainers take these from OpenOOD's optimizer: section)
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True

    @property
    def xi(self) -> Optional[float]:
        """The fixed ξ, or None when it is to be estimated."""
        return None if self.loss_constraint == "auto" else float(self.loss_constraint)


_NUMBER_RULES = {
    "xi_keep_ratio": (float, lambda v: 0 < v < 1, "a number in (0, 1)"),
    "keep_ratio": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "beta": (float, lambda v: v > 0 and math.isfinite(v), "a finite number > 0"),
    "lr": (float, lambda v: v > 0 and math.isfinite(v), "a finite number > 0"),
    "momentum": (float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (float, lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0"),
    "xi_seed": (int, lambda v: True, "an integer"),
    "seed": (int, lambda v: True, "an integer"),
    "xi_draws": (int, lambda v: v >= 1, "an integer >= 1"),
    "epochs": (int, lambda v: v >= 1, "an integer >= 1"),
}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _number(key, value, kind, ok, rule, where):
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{where}.{key} must be {rule}, got {value!r}") from None
    if not ok(number):
        raise ValueError(f"{where}.{key} must be {rule}, got {value!r}")
    return number


def _loss_constraint(value, where):
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        if isinstance(value, bool):
            raise ValueError
        xi = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}.loss_constraint must be 'auto' or a number >= 0 (the loss "
                         f"constraint xi), got {value!r}") from None
    if not math.isfinite(xi) or xi < 0:
        raise ValueError(f"{where}.loss_constraint must be 'auto' or a finite number >= 0, got {value!r}")
    return xi


def parse_options(section: Optional[Mapping], mode: str, where: str) -> MethodOptions:
    """Typed options from a config section; ``where`` names it in errors (e.g. ``trainer.trainer_args``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    section = dict(section or {})
    valid = [f.name for f in fields(MethodOptions) if f.name != "mode"]
    unknown = sorted(set(section) - set(valid))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; valid keys are {valid}")
    out = {"mode": mode}
    for key, value in section.items():
        if value is None:
            continue
        if key == "loss_constraint":
            out[key] = _loss_constraint(value, where)
        elif key == "threshold":
            if value not in THRESHOLDS:
                raise ValueError(f"{where}.threshold must be one of {THRESHOLDS}, got {value!r}")
            out[key] = value
        elif key in ("freeze_weights", "nesterov"):
            if isinstance(value, str) and value.lower() in _BOOLS:
                value = _BOOLS[value.lower()]
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{key} must be true or false, got {value!r}")
            out[key] = value
        else:
            out[key] = _number(key, value, *_NUMBER_RULES[key], where)
    options = MethodOptions(**out)
    if options.nesterov and options.momentum == 0:
        raise ValueError(f"{where}.nesterov: true needs momentum > 0; set nesterov: false or a momentum")
    return options
