"""OpenOOD's loose config values -> the core's types, with errors naming the config key.

OpenOOD hands configs over as loose dicts whose values may arrive as strings from the command
line (``--trainer.trainer_args.loss_constraint 0.3`` keeps the YAML default's type, ``auto``).
This module only converts types: every default and every rule is the core's
(``FinetuneConfig``, ``validate_keep_ratio``, ``validate_xi``, ``estimate_xi``); a core
``ValueError`` comes back prefixed with the key that held the value, e.g.
``trainer.trainer_args.keep_ratio: keep_ratio must be in (0, 1] ...``. Which images the
method trains on (``preprocessing``), the fit check and the postprocessors' ``batch_size``
concern OpenOOD's loaders, not the core, so their rules live here.
"""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Mapping, Optional

from um_plugin.core import MODES, FinetuneConfig
from um_plugin.core.config import check_choice, check_integer, validate_keep_ratio, validate_xi
from um_plugin.core.xi import OFFICIAL_ESTIMATE_KEEP_RATIO

PREPROCESSING = ("train", "test")  # images xi and fine-tuning use: augmented (the authors) or not
FIT_CHECKS = ("stop", "warn")      # what a model that does not fit those images does to the run
DEFAULT_FIT_MARGIN = 0.10          # ...when its accuracy there is this far below ID validation

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# trainer_args / postprocessor_args keys that are FinetuneConfig fields of the same name
_SHARED_FINETUNE_KEYS = ("keep_ratio", "threshold", "freeze_weights", "beta", "seed", "precision",
                         "include")
# trainer_args keys of the um_oe / umap_oe trainers (OpenOOD's own trainer.lambda_oe besides)
OUTLIER_KEYS = ("outlier_loss", "energy_beta", "m_in", "m_out")
# OpenOOD trainer name -> (FinetuneConfig mode, trains with OpenOOD's OE loader)
TRAINER_NAMES = {"um": ("um", False), "umap": ("umap", False),
                 "um_oe": ("um", True), "umap_oe": ("umap", True)}
# postprocessor_args keys for the optimisation (the trainers read OpenOOD's optimizer: section)
_POSTPROCESSOR_FINETUNE_KEYS = ("epochs", "lr", "momentum", "weight_decay", "nesterov", "min_lr",
                                "lr_schedule")
# optimizer: section key -> FinetuneConfig field
OPTIMIZER_KEYS = {"num_epochs": "epochs", "lr": "lr", "momentum": "momentum",
                  "weight_decay": "weight_decay", "nesterov": "nesterov", "min_lr": "min_lr",
                  "lr_schedule": "lr_schedule"}
# xi config key -> (XiOptions field, type); loss_constraint may also be 'auto' (estimate it)
_XI_FIELDS = {"loss_constraint": ("value", "float"), "xi_keep_ratio": ("keep_ratio", "float"),
              "xi_seed": ("seed", "int"), "xi_draws": ("draws", "int")}
_XI_KEYS = tuple(_XI_FIELDS)
_XI_HINTS = {"loss_constraint": " (or 'auto' to estimate it)",
             "xi_draws": " (random masks averaged for xi)"}
_DATA_KEYS = ("preprocessing", "fit_check", "fit_margin")
TRAINER_KEYS = _XI_KEYS + _DATA_KEYS + _SHARED_FINETUNE_KEYS
POSTPROCESSOR_KEYS = (_XI_KEYS + _DATA_KEYS + ("batch_size",) + _SHARED_FINETUNE_KEYS
                      + _POSTPROCESSOR_FINETUNE_KEYS)


class RouteStop(ValueError):
    """A route refused to go on for a reason the user can fix in the config; ``um-openood run``
    prints it as one line and exits 2, like a bad config value."""


@dataclass(frozen=True)
class XiOptions:
    """How a route gets ξ: a fixed value, or ``estimate_xi`` with these settings (the authors'
    random masks keep :data:`OFFICIAL_ESTIMATE_KEEP_RATIO`); checked by the core's rules."""

    value: Optional[float] = None                       # None: estimate it
    keep_ratio: float = OFFICIAL_ESTIMATE_KEEP_RATIO    # xi_keep_ratio
    seed: int = 0                                       # xi_seed
    draws: int = 1                                      # xi_draws: random masks averaged

    def __post_init__(self):
        if self.value is not None:
            object.__setattr__(self, "value", validate_xi(self.value))
        object.__setattr__(self, "keep_ratio", validate_keep_ratio(self.keep_ratio))
        check_integer("seed", self.seed)
        check_integer("draws", self.draws, 1)

    @property
    def estimate_kwargs(self) -> dict:
        """``estimate_xi``'s keyword arguments for these settings."""
        return {"keep_ratio": self.keep_ratio, "seed": self.seed, "draws": self.draws}


@dataclass(frozen=True)
class DataOptions:
    """Which images ξ and fine-tuning use, and the check that the model fits them."""

    preprocessing: str = "train"          # 'train': augmented, as the authors; 'test': not
    fit_check: str = "stop"
    fit_margin: float = DEFAULT_FIT_MARGIN
    batch_size: Optional[int] = None      # postprocessors: None = the ID training loader's


@dataclass(frozen=True)
class MethodOptions:
    """A route's UM/UMAP settings: the core's FinetuneConfig and how to get ξ."""

    finetune: FinetuneConfig
    xi: XiOptions
    data: DataOptions = DataOptions()

    @property
    def mode(self) -> str:
        return self.finetune.mode


def _field_types() -> dict:
    return {name: hint.__name__ if isinstance(hint, type) else str(hint)
            for name, hint in typing.get_type_hints(FinetuneConfig).items()}


def convert(value, kind: str):
    """``value`` as ``kind`` ('int', 'float', 'bool') when it is a readable spelling of one;
    otherwise unchanged, so the core's validator names it."""
    if isinstance(value, bool) or value is None:
        return value
    if kind == "bool":
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        return value
    if kind in ("int", "float") and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return value
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "float" and isinstance(value, int):
        return float(value)
    return value


def _prefixed(exc: ValueError, where: str) -> ValueError:
    return ValueError(f"{where}: {exc}")


def finetune_config(values: Mapping, sources: Mapping, **fixed) -> FinetuneConfig:
    """``FinetuneConfig(**fixed, **values)``; a core error is prefixed with the key (from
    ``sources``: field -> config key) that the message names first."""
    types = _field_types()
    kwargs = {name: convert(value, types.get(name, "")) for name, value in values.items()}
    try:
        return FinetuneConfig(**fixed, **kwargs)
    except ValueError as exc:
        message = str(exc)
        named = [(m.start(), name) for name in sources
                 for m in [re.search(rf"\b{re.escape(name)}\b", message)] if m]
        where = sources[min(named)[1]] if named else ", ".join(sources.values()) or "config"
        raise _prefixed(exc, where) from None


def _xi_options(section: dict, where: str) -> XiOptions:
    values = {}
    for key, (name, kind) in _XI_FIELDS.items():
        given = section.get(key)
        if given is None or (key == "loss_constraint" and isinstance(given, str)
                             and given.strip().lower() == "auto"):
            continue
        values[name] = convert(given, kind)
        try:
            XiOptions(**{name: values[name]})  # one at a time, so the error names its key
        except ValueError as exc:
            raise ValueError(f"{where}.{key}: {exc}{_XI_HINTS.get(key, '')}") from None
    return XiOptions(**values)


def _choice(section: dict, key: str, choices: tuple, where: str, default: str) -> str:
    value = section.get(key, default)
    check_choice(f"{where}.{key}", value, choices)
    return value


def _data_options(section: dict, where: str) -> DataOptions:
    out = {"preprocessing": _choice(section, "preprocessing", PREPROCESSING, where, "train"),
           "fit_check": _choice(section, "fit_check", FIT_CHECKS, where, "stop")}
    if section.get("fit_margin") is not None:
        margin = convert(section["fit_margin"], "float")
        if isinstance(margin, bool) or not isinstance(margin, float) or not 0 <= margin <= 1:
            raise ValueError(f"{where}.fit_margin must be a number in [0, 1] (a fraction of "
                             f"accuracy), got {section['fit_margin']!r}")
        out["fit_margin"] = margin
    if section.get("batch_size") is not None:
        try:
            out["batch_size"] = check_integer(f"{where}.batch_size",
                                              convert(section["batch_size"], "int"), 1)
        except ValueError as exc:
            raise ValueError(f"{exc} (null: the ID training loader's)") from None
    return DataOptions(**out)


def _section(section: Optional[Mapping], valid: tuple, where: str) -> dict:
    section = {k: v for k, v in dict(section or {}).items() if v is not None}
    unknown = sorted(set(section) - set(valid))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; valid keys are {list(valid)}")
    return section


def postprocessor_options(section: Optional[Mapping], mode: str,
                          where: str = "postprocessor.postprocessor_args") -> MethodOptions:
    """Typed options of the ``um`` / ``umap`` postprocessors (all in ``postprocessor_args``)."""
    check_choice("mode", mode, MODES)
    section = _section(section, POSTPROCESSOR_KEYS, where)
    xi = _xi_options(section, where)
    names = _SHARED_FINETUNE_KEYS + _POSTPROCESSOR_FINETUNE_KEYS
    values = {k: section[k] for k in names if k in section}
    config = finetune_config(values, {k: f"{where}.{k}" for k in names}, mode=mode)
    return MethodOptions(config, xi, _data_options(section, where))


def _outlier_values(config, name: str, section: dict, values: dict, sources: dict) -> None:
    """The um_oe / umap_oe settings: OpenOOD's ``trainer.lambda_oe`` and the outlier keys."""
    lambda_oe = config.trainer.get("lambda_oe")
    pipeline = (config.get("pipeline") or {}).get("name")
    if not TRAINER_NAMES[name][1]:
        if pipeline == "train_oe":
            raise ValueError(f"pipeline.name: the {name} trainer takes no OE loader; use trainer "
                             f"{name}_oe with pipeline train_oe, or pipeline train")
        if lambda_oe is not None:
            raise ValueError(f"trainer.lambda_oe: the {name} trainer has no outliers; use "
                             f"trainer {name}_oe with pipeline train_oe and an 'oe' split")
        return
    if pipeline != "train_oe":
        raise ValueError(f"pipeline.name: the {name} trainer needs 'train_oe' (OpenOOD's pipeline "
                         f"that hands it the OE loader), got {pipeline!r}")
    splits = list((config.get("dataset") or {}).get("split_names") or [])
    if "oe" not in splits:
        raise ValueError(f"dataset.split_names: the {name} trainer trains on an 'oe' split of "
                         f"outliers, the dataset config has {splits}; use one with an oe split "
                         "(OpenOOD's cifar10_oe.yml, or um-openood dataset-config --oe IMGLIST)")
    values["outlier_loss"] = section.get("outlier_loss", "oe")
    sources["outlier_loss"] = "trainer.trainer_args.outlier_loss"
    if values["outlier_loss"] == "none":
        raise ValueError(f"trainer.trainer_args.outlier_loss: the {name} trainer trains on "
                         "outliers, so 'oe' or 'energy', got 'none' (trainer "
                         f"{TRAINER_NAMES[name][0]} has none)")
    if lambda_oe is not None:
        values["lambda_oe"] = lambda_oe
    sources["lambda_oe"] = "trainer.lambda_oe"
    for key in OUTLIER_KEYS[1:]:
        if key in section:
            values[key] = section[key]
        sources[key] = f"trainer.trainer_args.{key}"


def trainer_options(config, name: str) -> MethodOptions:
    """Typed options of the ``um`` / ``umap`` / ``um_oe`` / ``umap_oe`` trainers:
    ``trainer.trainer_args`` plus OpenOOD's ``optimizer:`` section (num_epochs, lr, momentum,
    weight_decay, nesterov, min_lr, lr_schedule), and for the OE trainers OpenOOD's
    ``trainer.lambda_oe``."""
    check_choice("trainer name", name, tuple(TRAINER_NAMES))
    mode, with_outliers = TRAINER_NAMES[name]
    where = "trainer.trainer_args"
    keys = TRAINER_KEYS + (OUTLIER_KEYS if with_outliers else ())
    section = _section(config.trainer.get("trainer_args"), keys, where)
    xi = _xi_options(section, where)
    optimizer = dict(config.get("optimizer") or {})
    optimizer_name = optimizer.pop("name", "sgd")
    if str(optimizer_name).lower() != "sgd":
        raise ValueError(f"optimizer.name: the {name} trainer optimises with SGD (the paper's "
                         f"setting), got {optimizer_name!r}; set optimizer.name: sgd")
    values = {k: section[k] for k in _SHARED_FINETUNE_KEYS if k in section}
    sources = {k: f"{where}.{k}" for k in _SHARED_FINETUNE_KEYS}
    _outlier_values(config, name, section, values, sources)
    for key, field_name in OPTIMIZER_KEYS.items():
        if optimizer.get(key) is not None:
            values[field_name] = optimizer[key]
        sources[field_name] = f"optimizer.{key}"
    return MethodOptions(finetune_config(values, sources, mode=mode), xi,
                         _data_options(section, where))
