"""Registration inside the worker processes OpenOOD spawns for ``num_gpus > 1``.

``openood.utils.launch.launch`` starts one process per GPU with ``mp.spawn``; a spawned
process starts a fresh interpreter that never ran ``import um_plugin.openood``, so
``trainer.name: umap`` would be unknown there. :func:`register` points ``launch`` at
:func:`registered_worker` (picklable by reference), which registers first and then runs
OpenOOD's own ``_distributed_worker``.
"""
from __future__ import annotations


def registered_worker(*args, **kwargs):
    """OpenOOD's ``_distributed_worker``, in a process where um/umap are registered."""
    import importlib

    import um_plugin.openood  # noqa: F401  registers on import

    from .register import original
    launch = importlib.import_module("openood.utils.launch")  # the module, not launch()
    return original(launch._distributed_worker)(*args, **kwargs)
