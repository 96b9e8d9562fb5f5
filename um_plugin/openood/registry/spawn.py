"""Registration inside the worker processes OpenOOD spawns for ``num_gpus > 1``.

``openood.utils.launch.launch`` starts one process per GPU with ``mp.spawn``; a spawned
process starts a fresh interpreter that never ran ``import um_plugin.openood``, so
``trainer.name: umap`` would be unknown there. :func:`register` points ``launch`` at
:func:`registered_worker`, which is pickled by reference: unpickling it in the child imports
this module, hence its package ``um_plugin.openood``, which registers on import. It then runs
OpenOOD's own ``_distributed_worker``.
"""
from __future__ import annotations

import importlib

from um_plugin.openood.registry.wrapping import original

# The module, not the function: ``openood.utils`` re-exports a function named ``launch``.
_launch = importlib.import_module("openood.utils.launch")


def registered_worker(*args, **kwargs):
    """OpenOOD's ``_distributed_worker``, in a process where um/umap are registered."""
    return original(_launch._distributed_worker)(*args, **kwargs)
