"""What this adapter needs from OpenOOD: that it imports, and that its registries are where
we hook them, checked once before anything is changed.

A leaf module (it imports no other module of the adapter). OpenOOD itself is imported inside
the functions: it is the optional dependency whose absence :func:`require_openood` reports in
one line.
"""
from __future__ import annotations

import importlib
import types
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version

from um_plugin.requirements import missing_openood_runtime, openood_missing_message

# (module, attribute, kind) this plug-in relies on; checked before anything is changed.
LAYOUT = (
    ("openood.trainers.utils", "get_trainer", types.FunctionType),
    ("openood.postprocessors.utils", "get_postprocessor", types.FunctionType),
    ("openood.postprocessors.base_postprocessor", "BasePostprocessor", type),
    ("openood.evaluation_api.postprocessor", "get_postprocessor", types.FunctionType),
    ("openood.evaluation_api.postprocessor", "postprocessors", dict),
    ("openood.evaluation_api.datasets", "DATA_INFO", dict),
    ("openood.evaluation_api.datasets", "benchmarks_dict", dict),
    ("openood.evaluation_api.datasets", "dir_dict", dict),
    ("openood.evaluation_api.datasets", "data_setup", types.FunctionType),
    ("openood.evaluation_api.preprocessor", "default_preprocessing_dict", dict),
    ("openood.preprocessors.test_preprocessor", "TestStandardPreProcessor", type),
    ("openood.utils.comm", "is_main_process", types.FunctionType),
    ("openood.utils.launch", "_distributed_worker", types.FunctionType),
    ("openood.recorders.utils", "get_recorder", types.FunctionType),
    ("openood.networks.utils", "get_network", types.FunctionType),
)


class OpenOODNotInstalledError(ImportError):
    """OpenOOD cannot be imported."""


class OpenOODLayoutError(RuntimeError):
    """This OpenOOD does not have the registries this plug-in hooks into."""


def require_openood():
    """Import and return ``openood``, or name in one line everything missing for it."""
    missing = missing_openood_runtime()
    if missing:
        raise OpenOODNotInstalledError(openood_missing_message(missing))
    try:
        import openood
    except ImportError as exc:
        raise OpenOODNotInstalledError(f"OpenOOD cannot be imported ({exc}); "
                                       f"{openood_missing_message(['openood'])}") from exc
    return openood


def openood_where() -> str:
    """``OpenOOD <version> at <path>``, for messages about this OpenOOD."""
    import openood
    version = getattr(openood, "__version__", None)
    if version is None:
        try:
            version = dist_version("openood")
        except PackageNotFoundError:
            version = "unknown version"
    return f"OpenOOD {version} at {getattr(openood, '__file__', '?')}"


def load_layout() -> dict:
    """The OpenOOD modules in :data:`LAYOUT`, each checked to hold what we hook."""
    modules = {}
    for module_name, attr, kind in LAYOUT:
        try:
            module = modules.get(module_name) or importlib.import_module(module_name)
        except ImportError as exc:
            raise OpenOODLayoutError(
                f"{openood_where()}: cannot import {module_name} ({exc}); this plug-in supports "
                "OpenOOD v1.5's layout") from exc
        value = getattr(module, attr, None)
        if not isinstance(value, kind):
            raise OpenOODLayoutError(
                f"{openood_where()}: expected {module_name}.{attr} to be a {kind.__name__}, found "
                f"{type(value).__name__}; this plug-in supports OpenOOD v1.5's registry layout "
                f"({module_name.replace('.', '/')}.py)")
        modules[module_name] = module
    return modules
