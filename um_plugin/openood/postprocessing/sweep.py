"""UM's own settings in OpenOOD's parameter-search convention (``postprocessor_sweep``).

The paper chooses ξ on OOD validation data. OpenOOD chooses every method's settings one way: a
postprocessor with ``APS_mode: true`` exposes ``args_dict`` (its ``postprocessor_sweep``), and
the Evaluator's ``hyperparam_search`` calls ``set_hyperparam`` with each combination (a list in
``args_dict``'s key order) and keeps the one with the best validation AUROC. This module reads
our lists (``loss_constraint_list``, ``keep_ratio_list``, ``epochs_list``) and merges them with
the base's sweep; :mod:`.search` fine-tunes each setting. ξ may be a number, ``auto`` (the
estimate) or a multiple of the estimate (``2x``).
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Tuple

from um_plugin.core.config import check_integer, validate_keep_ratio, validate_xi

from um_plugin.openood.settings.options import MethodOptions, convert

# sweep key -> postprocessor_args key it varies (OpenOOD names its lists '<arg>_list')
UM_SWEEP_KEYS = {"loss_constraint_list": "loss_constraint", "keep_ratio_list": "keep_ratio",
                 "epochs_list": "epochs"}
_MULTIPLE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*[x\u00d7]\s*")


@dataclass(frozen=True)
class XiSpec:
    """ξ of one setting: a value, the estimate (``times == 1``) or a multiple of it."""

    value: Optional[float] = None
    times: Optional[float] = None
    text: str = "auto"

    @property
    def estimated(self) -> bool:
        return self.value is None


def xi_spec(raw, where: str) -> XiSpec:
    """A ``loss_constraint_list`` entry: a number, ``auto`` or ``<k>x`` (k times the estimate)."""
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return XiSpec(times=1.0, text="auto")
    if isinstance(raw, str):
        match = _MULTIPLE.fullmatch(raw)
        if match is not None:
            times = float(match.group(1))
            if math.isfinite(times) and times > 0:
                return XiSpec(times=times, text=raw.strip())
    try:
        value = validate_xi(convert(raw, "float"))
    except (ValueError, TypeError):
        raise ValueError(f"{where}: {raw!r} is not a loss constraint; use a number > 0, 'auto' "
                         "(the estimate) or a multiple of the estimate such as '2x'") from None
    return XiSpec(value=value, text=f"{value:g}")


@dataclass(frozen=True)
class Setting:
    """One UM setting of the sweep: ξ, and UMAP's keep ratio and the epochs (None: as given)."""

    xi: Optional[XiSpec] = None     # None: the postprocessor_args' loss_constraint
    keep_ratio: Optional[float] = None
    epochs: Optional[int] = None

    def options(self, base: MethodOptions) -> MethodOptions:
        """``base`` with this setting's ξ, keep ratio and epochs."""
        changes = {k: getattr(self, k) for k in ("keep_ratio", "epochs")
                   if getattr(self, k) is not None}
        xi = base.xi if self.xi is None else replace(base.xi, value=self.xi.value)
        return replace(base, finetune=replace(base.finetune, **changes), xi=xi)

    def label(self) -> str:
        parts = [f"loss_constraint={self.xi.text}"] if self.xi is not None else []
        parts += [f"{k}={getattr(self, k)}" for k in ("keep_ratio", "epochs")
                  if getattr(self, k) is not None]
        return ", ".join(parts)


@dataclass(frozen=True)
class Sweep:
    """The search space: the base's keys first, ours last (OpenOOD's search varies the last key
    slowest, so each UM setting's combinations come one after another)."""

    args_dict: dict                 # what OpenOOD's hyperparam_search iterates
    base_keys: Tuple[str, ...]      # the first len(base_keys) entries go to the base
    um_keys: Tuple[str, ...]

    def setting(self, values) -> Setting:
        """The UM setting of the UM part of a combination."""
        named = dict(zip(self.um_keys, values))
        where = "postprocessor.postprocessor_sweep.loss_constraint_list"
        xi = named.get("loss_constraint_list")
        return Setting(xi=xi_spec(xi, where) if xi is not None else None,
                       keep_ratio=named.get("keep_ratio_list"), epochs=named.get("epochs_list"))

    def settings(self) -> list:
        """Every UM setting, in the order the search meets them."""
        lists = [self.args_dict[k] for k in self.um_keys]
        return [self.setting(c) for c in _outer_first(lists)]

    @property
    def combinations(self) -> int:
        return math.prod(len(v) for v in self.args_dict.values())


def _outer_first(lists):
    """Combinations in OpenOOD's order: the first list varies fastest."""
    for combo in itertools.product(*reversed(lists)):
        yield list(reversed(combo))


def _values(key: str, raw, mode: str, where: str) -> list:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError(f"{where}.{key} must be a non-empty list, got {raw!r}")
    if key == "keep_ratio_list" and mode == "um":
        raise ValueError(f"{where}.keep_ratio_list is a UMAP setting (um fine-tunes every "
                         "weight); remove it, or use umap")
    out = []
    for item in raw:
        if key == "loss_constraint_list":
            xi_spec(item, f"{where}.{key}")  # checked here, kept as written
            value = item
        elif key == "keep_ratio_list":
            try:
                value = validate_keep_ratio(convert(item, "float"))
            except ValueError as exc:
                raise ValueError(f"{where}.{key}: {exc}") from None
        else:
            try:
                value = check_integer("epochs", convert(item, "int"), 1)
            except ValueError as exc:
                raise ValueError(f"{where}.{key}: {exc}") from None
        out.append(value)
    if len({str(v).strip().lower() for v in out}) != len(out):
        raise ValueError(f"{where}.{key} repeats a value: {list(raw)!r}")
    return out


def read_sweep(section: Optional[Mapping], mode: str, base_sweep: Optional[Mapping],
               where: str = "postprocessor.postprocessor_sweep") -> Optional[Sweep]:
    """The merged search space, or None when ``section`` names none of our lists.

    ``base_sweep`` is the base's own ``args_dict`` (None when the base does not search); a key
    of it in ``section`` replaces the base's list."""
    section = dict(section or {})
    base_sweep = dict(base_sweep or {})
    valid = list(UM_SWEEP_KEYS) + list(base_sweep)
    unknown = sorted(set(section) - set(valid))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; valid keys are {valid} (the "
                         "base's own keys only when the base searches: APS_mode true)")
    ours = [k for k in UM_SWEEP_KEYS if k in section]
    if not ours:
        return None
    merged = {}
    for key, values in base_sweep.items():
        values = section.get(key, values)
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{where}.{key} must be a non-empty list, got {values!r}")
        merged[key] = list(values)
    for key in ours:
        merged[key] = _values(key, section[key], mode, where)
    return Sweep(merged, tuple(base_sweep), tuple(ours))


def parse_flag(text: str) -> dict:
    """``'loss_constraint_list=0.1,auto,2x'`` -> ``{'loss_constraint_list': [0.1, 'auto', '2x']}``
    (the ``--sweep`` flag); numbers are read as numbers."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ValueError(f"--sweep {text!r}: use KEY=V1,V2,... (e.g. loss_constraint_list=0.1,"
                         "auto,2x)")
    out = []
    for item in values.split(","):
        item = item.strip()
        number = convert(item, "float")
        out.append(int(number) if isinstance(number, float) and number.is_integer()
                   and "." not in item and "e" not in item.lower() else number)
    return {key.strip(): out}
