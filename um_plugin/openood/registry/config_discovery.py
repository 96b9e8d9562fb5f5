"""Where the postprocessors' YAMLs are found: ours (``um.yml`` / ``umap.yml``) and the base
method's (``postprocessors/<base>.yml`` from OpenOOD's ``configs/``), never downloaded."""
from __future__ import annotations

import os

import openood
from openood.utils.config import Config

from um_plugin.shipped import configs_root

from um_plugin.openood.registry.names import split_name

CONFIG_ROOT_ENV = "OPENOOD_CONFIG_ROOT"
CHECKOUT_ENV = "UM_PLUGIN_OPENOOD_ROOT"


def config_roots(config_root=None) -> list:
    """The ``configs/`` folders searched for a base postprocessor's YAML, in this order:
    ``config_root`` (the Evaluator's argument, or the pipeline config's), ``$OPENOOD_CONFIG_ROOT``,
    ``$UM_PLUGIN_OPENOOD_ROOT/configs`` (an OpenOOD checkout), ``./configs`` (main.py runs from
    the checkout), and the ``configs/`` beside an editable OpenOOD install."""
    checkout = os.environ.get(CHECKOUT_ENV)
    installed = os.path.dirname(os.path.dirname(os.path.abspath(openood.__file__)))
    roots = [os.fspath(config_root) if config_root else None,
             os.environ.get(CONFIG_ROOT_ENV) or None,
             os.path.join(checkout, "configs") if checkout else None,
             os.path.join(os.getcwd(), "configs"),
             os.path.join(installed, "configs")]
    out = []
    for root in roots:
        if root and os.path.abspath(root) not in out:
            out.append(os.path.abspath(root))
    return out


def base_config_candidates(base: str, config_root=None) -> list:
    """Where the base postprocessor's YAML is looked for, in order (never downloaded)."""
    return [os.path.join(root, "postprocessors", f"{base}.yml") for root in config_roots(config_root)]


def base_config_path(base: str, config_root=None) -> str:
    """The first of :func:`base_config_candidates` that exists, or one line on where we looked."""
    candidates = base_config_candidates(base, config_root)
    path = next((p for p in candidates if os.path.isfile(p)), None)
    if path is None:
        raise FileNotFoundError(
            f"no config for base postprocessor {base!r} (postprocessors/{base}.yml); looked in "
            f"{candidates}. Point one of these at OpenOOD's configs/ folder: the Evaluator's "
            f"config_root, ${CONFIG_ROOT_ENV}, or ${CHECKOUT_ENV} (an OpenOOD checkout)")
    return path


def load_method_config(name: str, config_root=None) -> Config:
    """Our YAML for ``name`` (``<config_root>`` copy first, else the packaged one), base filled in."""
    mode, base = split_name(name)
    path = None
    if config_root:
        for candidate in (name, mode):
            p = os.path.join(config_root, "postprocessors", f"{candidate}.yml")
            if os.path.isfile(p):
                path = p
                break
    config = Config(path or os.path.join(configs_root(), "postprocessors", f"{mode}.yml"))
    config.postprocessor.name = mode
    if base is not None:
        config.postprocessor.base = base
    config.postprocessor.config_root = os.fspath(config_root) if config_root else None
    return config
