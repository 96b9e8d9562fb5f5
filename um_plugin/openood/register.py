"""Make ``um`` / ``umap`` (and ``um_<base>`` / ``umap_<base>``) names every OpenOOD lookup finds.

OpenOOD's registries are dict literals inside ``get_trainer`` and ``get_postprocessor``
(``openood.postprocessors.utils``) plus the module-level ``postprocessors`` dict next to the
Evaluator's ``get_postprocessor`` (``openood.evaluation_api.postprocessor``), and pipelines and
the Evaluator hold their own copies of those functions (``from ... import get_trainer``). So
:func:`register` wraps each function (our names first, everything else to OpenOOD unchanged)
and swaps the wrapper in wherever a loaded module holds the original; modules loaded later
import the wrapper. It is idempotent and never shadows a name OpenOOD already has.
"""
from __future__ import annotations

import importlib
import sys
import types

METHODS = ("um", "umap")
INSTALL_HINT = ("install OpenOOD v1.5 next to the plug-in: `pip install "
                "git+https://github.com/Jingkang50/OpenOOD` (or `pip install -e <OpenOOD checkout>`), "
                "plus `pip install libmr` if its import asks for it")

# (module, attribute, kind) this plug-in relies on; checked before anything is changed.
_LAYOUT = (
    ("openood.trainers.utils", "get_trainer", types.FunctionType),
    ("openood.postprocessors.utils", "get_postprocessor", types.FunctionType),
    ("openood.postprocessors.base_postprocessor", "BasePostprocessor", type),
    ("openood.evaluation_api.postprocessor", "get_postprocessor", types.FunctionType),
    ("openood.evaluation_api.postprocessor", "postprocessors", dict),
    ("openood.evaluation_api.datasets", "DATA_INFO", dict),
    ("openood.evaluation_api.datasets", "benchmarks_dict", dict),
    ("openood.evaluation_api.preprocessor", "default_preprocessing_dict", dict),
    ("openood.trainers.lr_scheduler", "cosine_annealing", types.FunctionType),
    ("openood.utils.comm", "is_main_process", types.FunctionType),
    ("openood.utils.launch", "_distributed_worker", types.FunctionType),
)
_WRAPPED = "__um_plugin_wraps__"  # attribute on our wrappers pointing at OpenOOD's original


class OpenOODNotInstalledError(ImportError):
    """OpenOOD cannot be imported."""


class OpenOODLayoutError(RuntimeError):
    """This OpenOOD does not have the registries this plug-in hooks into."""


class RegistrationError(RuntimeError):
    """A name this plug-in registers is already taken by OpenOOD."""


def require_openood():
    """Import and return ``openood``, or say how to install it."""
    try:
        import openood
    except ImportError as exc:
        raise OpenOODNotInstalledError(
            f"um_plugin.openood needs OpenOOD, which cannot be imported ({exc}); {INSTALL_HINT}") from exc
    return openood


def _openood_where() -> str:
    import openood
    version = getattr(openood, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version
            version = dist_version("openood")
        except Exception:
            version = "unknown version"
    return f"OpenOOD {version} at {getattr(openood, '__file__', '?')}"


def _load_layout() -> dict:
    modules = {}
    for module_name, attr, kind in _LAYOUT:
        try:
            module = modules.get(module_name) or importlib.import_module(module_name)
        except ImportError as exc:
            raise OpenOODLayoutError(
                f"{_openood_where()}: cannot import {module_name} ({exc}); this plug-in supports "
                "OpenOOD v1.5's layout") from exc
        value = getattr(module, attr, None)
        if not isinstance(value, kind):
            raise OpenOODLayoutError(
                f"{_openood_where()}: expected {module_name}.{attr} to be a {kind.__name__}, found "
                f"{type(value).__name__}; this plug-in supports OpenOOD v1.5's registry layout "
                f"({module_name.replace('.', '/')}.py)")
        modules[module_name] = module
    return modules


def original(func):
    """OpenOOD's own function behind one of our wrappers (or ``func`` itself)."""
    return getattr(func, _WRAPPED, func)


def _literal_names(func) -> set:
    """String constants of a function: the keys of the registry dict literal inside it."""
    names, stack = set(), [original(func).__code__]
    while stack:
        code = stack.pop()
        consts = list(code.co_consts)
        while consts:
            const = consts.pop()
            if isinstance(const, str) and const.isidentifier():
                names.add(const)
            elif isinstance(const, (tuple, frozenset)):  # keys of a small dict literal
                consts.extend(const)
            elif isinstance(const, types.CodeType):
                stack.append(const)
    return names


def is_method_name(name) -> bool:
    """Whether ``name`` is ours: ``um``, ``umap``, ``um_<base>`` or ``umap_<base>``."""
    return isinstance(name, str) and (name in METHODS or name.startswith(("um_", "umap_")))


def known_postprocessor_names() -> list:
    """Every base postprocessor name OpenOOD knows, from both registries."""
    from openood.evaluation_api import postprocessor as eval_pp
    from openood.postprocessors import utils as pp_utils
    names = set(eval_pp.postprocessors) | _literal_names(pp_utils.get_postprocessor)
    return sorted(n for n in names if not is_method_name(n))


def _check_no_clash(modules: dict, ours: dict) -> None:
    trainer_names = _literal_names(modules["openood.trainers.utils"].get_trainer)
    pp_names = _literal_names(modules["openood.postprocessors.utils"].get_postprocessor)
    eval_dict = modules["openood.evaluation_api.postprocessor"].postprocessors
    clashes = [f"trainer {n!r} (openood/trainers/utils.py)" for n in METHODS if n in trainer_names]
    clashes += [f"postprocessor {n!r} (openood/postprocessors/utils.py)" for n in METHODS if n in pp_names]
    clashes += [f"postprocessor {n!r} (openood/evaluation_api/postprocessor.py)"
                for n, cls in eval_dict.items() if is_method_name(n) and cls is not ours.get(n)]
    if clashes:
        raise RegistrationError(
            f"{_openood_where()} already defines {', '.join(clashes)}; um_plugin refuses to shadow "
            "an OpenOOD method. Remove or rename that entry, or uninstall one of the two.")


def _swap_everywhere(old, new) -> int:
    """Replace every module-level reference to ``old`` by ``new``; return how many."""
    count = 0
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            if value is old:
                setattr(module, attr, new)
                count += 1
    return count


def _hook(module, attr: str, make_wrapper) -> None:
    current = getattr(module, attr)
    if hasattr(current, _WRAPPED):
        # Already ours; sweep again in case a module copied OpenOOD's original meanwhile.
        _swap_everywhere(original(current), current)
        return
    wrapper = make_wrapper(current)
    setattr(wrapper, _WRAPPED, current)
    wrapper.__wrapped__ = current
    _swap_everywhere(current, wrapper)


def register() -> None:
    """Register the trainers and postprocessors with OpenOOD (idempotent)."""
    require_openood()
    modules = _load_layout()
    from . import postprocessors as ours_pp
    from . import trainers as ours_tr

    ours = {"um": ours_pp.UMPostprocessor, "umap": ours_pp.UMAPPostprocessor}
    _check_no_clash(modules, ours)

    _hook(modules["openood.trainers.utils"], "get_trainer", ours_tr.make_get_trainer)
    _hook(modules["openood.postprocessors.utils"], "get_postprocessor",
          ours_pp.make_pipeline_get_postprocessor)
    _hook(modules["openood.evaluation_api.postprocessor"], "get_postprocessor",
          ours_pp.make_evaluator_get_postprocessor)
    modules["openood.evaluation_api.postprocessor"].postprocessors.update(ours)
    _hook_spawned_workers(modules["openood.utils.launch"])


def _hook_spawned_workers(launch) -> None:
    """Make processes spawned by OpenOOD's ``launch`` (num_gpus > 1) register too."""
    from .spawn import registered_worker
    current = launch._distributed_worker
    if current is registered_worker:
        return
    registered_worker.__dict__[_WRAPPED] = current
    launch._distributed_worker = registered_worker


def is_registered() -> bool:
    """Whether :func:`register` has hooked this process's OpenOOD (False if not importable)."""
    try:
        from openood.trainers import utils as trainer_utils
    except ImportError:
        return False
    return hasattr(trainer_utils.get_trainer, _WRAPPED)
