"""um-plugin: Unleashing Mask (UM) and UMAP for any PyTorch classifier and for OpenOOD v1.5.

``um_plugin.core`` is the method in plain torch; ``um_plugin.openood`` (imported on demand,
never from here) registers ``um`` / ``umap`` with OpenOOD. The core's names are imported on
first use, so the command line's ``--help``, argument errors and ``gate`` never import torch.
"""
import importlib

__version__ = "0.1.0"


def __getattr__(name):
    core = importlib.import_module(".core", __name__)
    if name == "__all__" or name in core.__all__:
        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(importlib.import_module(".core", __name__).__all__))
