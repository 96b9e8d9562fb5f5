"""OpenOOD's two ``get_postprocessor`` lookups, wrapped so that our names build ours.

``register`` installs these wrappers; every other name goes to OpenOOD's function unchanged.
"""
from __future__ import annotations

from openood.utils.config import Config, merge_configs

from um_plugin.openood.postprocessing import postprocessors  # by module: a reloaded plug-in builds its current classes
from um_plugin.openood.registry.config_discovery import load_method_config
from um_plugin.openood.registry.names import is_method_name, split_name


def make_evaluator_get_postprocessor(openood_get_postprocessor):
    """Wrap ``openood.evaluation_api.postprocessor.get_postprocessor`` for our names."""

    def get_postprocessor(config_root, postprocessor_name, id_data_name):
        if not is_method_name(postprocessor_name):
            return openood_get_postprocessor(config_root, postprocessor_name, id_data_name)
        config = load_method_config(postprocessor_name, config_root)
        config = merge_configs(config, Config(**{"dataset": {"name": id_data_name}}))
        mode = config.postprocessor.name
        return postprocessors.POSTPROCESSORS[mode](config)

    return get_postprocessor


def make_pipeline_get_postprocessor(openood_get_postprocessor):
    """Wrap ``openood.postprocessors.utils.get_postprocessor`` (test_ood pipelines) for our names."""

    def get_postprocessor(config):
        name = config.postprocessor.name if config.postprocessor is not None else None
        if not is_method_name(name):
            return openood_get_postprocessor(config)
        mode, base = split_name(name)
        if base is not None:
            config.postprocessor.base = base
        config.postprocessor.name = mode
        postprocessor = postprocessors.POSTPROCESSORS[mode](config)
        return postprocessor

    return get_postprocessor
