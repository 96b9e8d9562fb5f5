"""The base OpenOOD postprocessor that scores the fine-tuned network (``base: ebo`` etc.).

Built as OpenOOD builds it (its own YAML merged over the run's config), and handed the network
wrapper it expects: the Evaluator wraps the net for ``react`` / ``ash`` / ``scale`` /
``adascale_*`` only when they are the postprocessor's own name, so we do it for them.
"""
from __future__ import annotations

import importlib

from openood.evaluation_api import postprocessor as eval_pp
from openood.postprocessors import utils as pp_utils
from openood.utils.config import Config, merge_configs

from um_plugin.openood.registry.config_discovery import base_config_path
from um_plugin.openood.registry.names import is_method_name, known_postprocessor_names
from um_plugin.openood.registry.wrapping import original

# base name -> (module, class) of the network wrapper that base expects
NET_WRAPPERS = {
    "react": ("openood.networks.react_net", "ReactNet"),
    "ash": ("openood.networks.ash_net", "ASHNet"),
    "scale": ("openood.networks.scale_net", "ScaleNet"),
    "adascale_a": ("openood.networks.adascale_net", "AdaScaleANet"),
    "adascale_l": ("openood.networks.adascale_net", "AdaScaleLNet"),
}


def build_base(base: str, config: Config, config_root=None):
    """The base postprocessor, configured from its own YAML merged over ``config``."""
    if not isinstance(base, str) or is_method_name(base):
        raise ValueError(f"base postprocessor must be an OpenOOD method name, got {base!r}; "
                         f"known: {known_postprocessor_names()}")
    known = known_postprocessor_names()
    if base not in known:
        raise ValueError(f"unknown base postprocessor {base!r}; OpenOOD knows {known}")
    path = base_config_path(base, config_root)
    base_config = Config(config)
    if "postprocessor" in base_config:
        del base_config["postprocessor"]
    base_config = merge_configs(base_config, Config(path))
    cls = eval_pp.postprocessors.get(base)  # not one of ours: is_method_name(base) is False
    if cls is not None:
        instance = cls(base_config)
    else:  # only in openood.postprocessors.utils' registry
        instance = original(pp_utils.get_postprocessor)(base_config)
    instance.APS_mode = bool(base_config.postprocessor.APS_mode)
    instance.hyperparam_search_done = False
    return instance


def base_net(base: str, net, cache: dict):
    """The net ``base`` expects (ReactNet etc. for react/ash/scale), one per net in ``cache``."""
    spec = NET_WRAPPERS.get(base)
    if spec is None or type(net).__name__ == spec[1]:
        return net
    key = id(net)
    if key not in cache or cache[key].backbone is not net:
        cache[key] = getattr(importlib.import_module(spec[0]), spec[1])(net)
    return cache[key]
