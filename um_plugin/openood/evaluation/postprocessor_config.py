"""The postprocessor config ``um-openood eval`` scores with: resolved as the Evaluator resolves
it, ``--set KEY=VALUE`` applied, hashed, and built into the postprocessor.

The Evaluator reads ``<config_root>/postprocessors/<name>.yml`` (ours: ``um.yml`` / ``umap.yml``
plus the base's YAML) and sets ``dataset.name``; a leaderboard row and the score cache need the
same config as data, so it is resolved here, once per postprocessor, and the object is built
from it as ``evaluation_api.postprocessor.get_postprocessor`` builds one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

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


def resolve(name: str, config_root: str, id_name: str, overrides: dict,
            batch_size: int) -> ResolvedPostprocessor:
    """The config ``name`` is scored with (one-line ValueError for a setting it refuses)."""
    config = _loaded(name, config_root, id_name)
    apply_overrides(config, overrides)
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
    return ResolvedPostprocessor(name, config, sha256_json(hashed), settings)


def resolve_all(names, config_root: str, id_name: str, overrides: dict, batch_size: int):
    """:func:`resolve` for each name; a ``--set`` key no postprocessor has is refused."""
    resolved = [resolve(n, config_root, id_name, overrides, batch_size) for n in names]
    for key in overrides:
        if all(key in apply_overrides(_loaded(n, config_root, id_name), {key: None})
               for n in names):
            valid = sorted({k for r in resolved
                            for k in (r.config.postprocessor.get("postprocessor_args") or {})})
            raise ValueError(f"--set {key}: no postprocessor of {list(names)} has this setting; "
                             f"postprocessor_args keys: {valid}")
    return resolved


def build(resolved: ResolvedPostprocessor):
    """The postprocessor object, as the Evaluator's ``get_postprocessor`` would build it."""
    config = resolved.config
    if is_method_name(resolved.name):
        pp = postprocessors.POSTPROCESSORS[config.postprocessor.name](config)
        pp.setting_syntax = EVAL_SETTING_SYNTAX
        return pp
    pp = eval_pp.postprocessors[resolved.name](config)
    pp.APS_mode = config.postprocessor.APS_mode
    pp.hyperparam_search_done = False
    return pp
