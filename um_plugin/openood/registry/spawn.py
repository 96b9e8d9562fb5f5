"""Registration inside the worker processes OpenOOD spawns for ``num_gpus > 1``.

``openood.utils.launch.launch`` starts one process per GPU with ``mp.spawn``; a spawned
process starts a fresh interpreter that never ran ``import um_plugin.openood``, so
``trainer.name: umap`` would be unknown there. :func:`register` points ``launch`` at
:func:`registered_worker`, which is pickled by reference: unpickling it in the child imports
this module, hence its package ``um_plugin.openood``, which registers on import. It then runs
OpenOOD's own ``_distributed_worker`` (``--cpu`` spawns ``launching.cpu_worker`` instead).
"""
from __future__ import annotations

import importlib

# torch._dynamo captures the default process group when first imported, so it must be imported
# before a worker makes its group; importing this module (as unpickling registered_worker does)
# imports it first. (OpenOOD's own imports bring it in anyway.)
import torch._dynamo  # noqa: F401

from um_plugin.openood.registry.wrapping import original
from um_plugin.openood.training.launching import leave_process_group

# The module, not the function: ``openood.utils`` re-exports a function named ``launch``.
_launch = importlib.import_module("openood.utils.launch")


def registered_worker(*args, **kwargs):
    """OpenOOD's ``_distributed_worker``, in a process where um/umap are registered, leaving
    its process group destroyed (OpenOOD never destroys it; see ``launching.py``)."""
    try:
        return original(_launch._distributed_worker)(*args, **kwargs)
    finally:
        leave_process_group()
