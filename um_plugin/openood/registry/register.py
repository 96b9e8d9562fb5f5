"""Make ``um`` / ``umap`` (and ``um_<base>`` / ``umap_<base>``) names every OpenOOD lookup finds.

OpenOOD's registries are dict literals inside ``get_trainer``, ``get_recorder`` (wrapped so
the ``um`` / ``umap`` trainers' ``best.ckpt`` is the final model) and ``get_postprocessor``
(``openood.postprocessors.utils``) plus the module-level ``postprocessors`` dict next to the
Evaluator's ``get_postprocessor`` (``openood.evaluation_api.postprocessor``), and pipelines and
the Evaluator hold their own copies of those functions (``from ... import get_trainer``). So
:func:`register` wraps each function (our names first, everything else to OpenOOD unchanged)
and swaps the wrapper in wherever a loaded module holds the original; modules loaded later
import the wrapper. It is idempotent and never shadows a name OpenOOD already has. The
Evaluator's ``data_setup`` is wrapped the same way, so it downloads nothing unasked
(:mod:`.downloads`).
"""
from __future__ import annotations

import sys

from openood.trainers import utils as trainer_utils

from um_plugin.core import MODES

from um_plugin.openood.registry import downloads

from um_plugin.openood.registry import lookups
from um_plugin.openood.registry import networks as ours_net
from um_plugin.openood.postprocessing import postprocessors as ours_pp
from um_plugin.openood.training import recorder as ours_rec
from um_plugin.openood.training import trainers as ours_tr
from um_plugin.openood.registry.layout import load_layout, openood_where, require_openood
from um_plugin.openood.registry.names import is_method_name, literal_names
from um_plugin.openood.registry.spawn import registered_worker
from um_plugin.openood.registry.wrapping import WRAPPED, original

__all__ = ["register", "is_registered", "RegistrationError"]


class RegistrationError(RuntimeError):
    """A name this plug-in registers is already taken by OpenOOD."""


def _ours(cls) -> bool:
    """A class of our postprocessors module: the current one, or one that an
    ``importlib.reload`` left stale (register() then replaces it)."""
    return getattr(cls, "__module__", None) == ours_pp.__name__


def _check_no_clash(modules: dict) -> None:
    trainer_names = literal_names(modules["openood.trainers.utils"].get_trainer)
    pp_names = literal_names(modules["openood.postprocessors.utils"].get_postprocessor)
    eval_dict = modules["openood.evaluation_api.postprocessor"].postprocessors
    clashes = [f"trainer {n!r} (openood/trainers/utils.py)" for n in ours_tr.TRAINERS
               if n in trainer_names]
    clashes += [f"postprocessor {n!r} (openood/postprocessors/utils.py)" for n in MODES if n in pp_names]
    net_names = literal_names(modules["openood.networks.utils"].get_network)
    clashes += [f"network {n!r} (openood/networks/utils.py)" for n in ours_net.NETWORKS
                if n in net_names]
    clashes += [f"postprocessor {n!r} (openood/evaluation_api/postprocessor.py)"
                for n, cls in eval_dict.items() if is_method_name(n) and not _ours(cls)]
    if clashes:
        raise RegistrationError(
            f"{openood_where()} already defines {', '.join(clashes)}; um_plugin refuses to shadow "
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
    if hasattr(current, WRAPPED):
        # Already ours; sweep again in case a module copied OpenOOD's original meanwhile.
        _swap_everywhere(original(current), current)
        return
    wrapper = make_wrapper(current)
    setattr(wrapper, WRAPPED, current)
    wrapper.__wrapped__ = current
    _swap_everywhere(current, wrapper)


def register() -> None:
    """Register the trainers and postprocessors with OpenOOD (idempotent)."""
    require_openood()
    modules = load_layout()
    ours = dict(ours_pp.POSTPROCESSORS)
    _check_no_clash(modules)

    _hook(modules["openood.trainers.utils"], "get_trainer", ours_tr.make_get_trainer)
    _hook(modules["openood.recorders.utils"], "get_recorder", ours_rec.make_get_recorder)
    _hook(modules["openood.networks.utils"], "get_network", ours_net.make_get_network)
    _hook(modules["openood.postprocessors.utils"], "get_postprocessor",
          lookups.make_pipeline_get_postprocessor)
    _hook(modules["openood.evaluation_api.postprocessor"], "get_postprocessor",
          lookups.make_evaluator_get_postprocessor)
    modules["openood.evaluation_api.postprocessor"].postprocessors.update(ours)
    _hook(modules["openood.evaluation_api.datasets"], "data_setup", downloads.make_data_setup)
    _hook_spawned_workers(modules["openood.utils.launch"])


def _hook_spawned_workers(launch) -> None:
    """Make processes spawned by OpenOOD's ``launch`` (num_gpus > 1) register too."""
    current = launch._distributed_worker
    if current is registered_worker:
        return
    registered_worker.__dict__[WRAPPED] = original(current)  # a reloaded spawn: OpenOOD's, once
    launch._distributed_worker = registered_worker


def is_registered() -> bool:
    """Whether :func:`register` has hooked this process's OpenOOD."""
    return hasattr(trainer_utils.get_trainer, WRAPPED)
