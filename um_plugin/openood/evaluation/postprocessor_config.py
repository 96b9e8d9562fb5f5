"""The postprocessor config ``um-openood eval`` scores with: resolved as the Evaluator resolves
it, ``--set KEY=VALUE`` applied, hashed, and built into the postprocessor.

The Evaluator reads ``<config_root>/postprocessors/<name>.yml`` (ours: ``um.yml`` / ``umap.yml``
plus the base's YAML) and sets ``dataset.name``; a leaderboard row and the score cache need the
same config as data, so it is resolved here, once per postprocessor (``--sweep`` lists
included: a cache made without them is not reused with them), and the object is built from it
as ``evaluation_api.postprocessor.get_postprocessor`` builds one.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Optional

from openood.evaluation_api import postprocessor as eval_pp
from openood.utils.config import Config, merge_configs

from um_plugin.leaderboard.provenance import sha256_json

from um_plugin.openood.postprocessing import postprocessors
from um_plugin.openood.registry.config_discovery import base_config_path, load_method_config
from um_plugin.openood.registry.names import is_method_name, split_name
from um_plugin.openood.settings.options import postprocessor_options
from um_plugin.openood.settings.presets import differences

# how the fit check names a setting in eval: the flag that changes it there
EVAL_SETTING_SYNTAX = "pass --set {key}={value}"


@dataclass
class ResolvedPostprocessor:
    """One postprocessor as ``eval`` scores it: its name, config and what identifies it."""
    name: str
    config: Config
    sha256: str      # of the config (and a method's base YAML): the cache key's part
    settings: str    # UM / UMAP settings that differ from the authors' ('' for the rest)


def _loaded(name: str, config_root: str, id_name: str) -> Config:
    if is_method_name(name):
        config = load_method_config(name, config_root)
    else:
        config = Config(os.path.join(config_root, "postprocessors", f"{name}.yml"))
    return merge_configs(config, Config(**{"dataset": {"name": id_name}}))


def apply_overrides(config: Config, overrides: dict) -> list:
    """Set each ``--set`` key in ``postprocessor.postprocessor_args`` (or ``postprocessor``)
    where the config has it; return the keys it does not have."""
    section = config.postprocessor
    args = section.get("postprocessor_args")
    absent = []
    for key, value in overrides.items():
        if args is not None and key in args:
            args[key] = value
        elif key in section and key not in ("name", "postprocessor_args", "postprocessor_sweep"):
            section[key] = value
        else:
            absent.append(key)
    return absent


def apply_sweep(config: Config, sweep: dict) -> None:
    """``--sweep`` lists over the YAML's ``postprocessor_sweep``, APS_mode on: OpenOOD's
    parameter search chooses among them."""
    section = config.postprocessor
    section.postprocessor_sweep = {**dict(section.get("postprocessor_sweep") or {}), **sweep}
    section.APS_mode = True


def _searched(config: Config, flag: str) -> str:
    """What OpenOOD's search chooses among, for the row's settings ('' without a search of UM
    settings); the sweep is checked by building the postprocessor from a copy (one line)."""
    try:
        pp = _build_ours(copy.deepcopy(config))
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None
    if pp.sweep is None or not pp.APS_mode:
        return ""
    lists = (f"{k}={','.join(map(str, v))}" for k, v in pp.sweep.args_dict.items())
    return "OpenOOD's search over " + " ".join(lists)


def resolve(name: str, config_root: str, id_name: str, overrides: dict,
            batch_size: int, sweep: Optional[dict] = None) -> ResolvedPostprocessor:
    """The config ``name`` is scored with (one-line ValueError for a setting it refuses).

    ``sweep`` (``--sweep``) applies to our names only; a sweep, from it or the YAML, is checked
    by building the postprocessor, before any scoring."""
    config = _loaded(name, config_root, id_name)
    apply_overrides(config, overrides)
    if sweep and is_method_name(name):
        apply_sweep(config, sweep)
    hashed = {"config": config}
    settings = ""
    if is_method_name(name):
        mode, _ = split_name(name)
        base = config.postprocessor.get("base") or "ebo"
        hashed["base"] = Config(base_config_path(base, config_root))
        try:
            options = postprocessor_options(config.postprocessor.postprocessor_args, mode)
        except ValueError as exc:
            raise ValueError(f"--postprocessor {name!r}: {exc}") from None
        data_batch = options.data.batch_size or batch_size
        settings = "; ".join(differences(options, data_batch)) or "the authors' setting"
        if config.postprocessor.get("postprocessor_sweep"):
            flag = f"--sweep for {name}" if sweep else f"--postprocessor {name!r}"
            settings = "; ".join(filter(None, (settings, _searched(config, flag))))
    return ResolvedPostprocessor(name, config, sha256_json(hashed), settings)


def resolve_all(names, config_root: str, id_name: str, overrides: dict, batch_size: int,
                sweep: Optional[dict] = None):
    """:func:`resolve` for each name; a ``--set`` key no postprocessor has is refused."""
    resolved = [resolve(n, config_root, id_name, overrides, batch_size, sweep) for n in names]
    for key in overrides:
        if all(key in apply_overrides(_loaded(n, config_root, id_name), {key: None})
               for n in names):
            valid = sorted({k for r in resolved
                            for k in (r.config.postprocessor.get("postprocessor_args") or {})})
            raise ValueError(f"--set {key}: no postprocessor of {list(names)} has this setting; "
                             f"postprocessor_args keys: {valid}")
    return resolved


def _build_ours(config: Config):
    pp = postprocessors.POSTPROCESSORS[config.postprocessor.name](config)
    pp.setting_syntax = EVAL_SETTING_SYNTAX
    return pp


def build(resolved: ResolvedPostprocessor):
    """The postprocessor object, as the Evaluator's ``get_postprocessor`` would build it."""
    config = resolved.config
    if is_method_name(resolved.name):
        return _build_ours(config)
    pp = eval_pp.postprocessors[resolved.name](config)
    pp.APS_mode = config.postprocessor.APS_mode
    pp.hyperparam_search_done = False
    return pp
