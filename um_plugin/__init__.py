"""um-plugin: Unleashing Mask (UM) and UMAP for any PyTorch classifier and for OpenOOD v1.5.

``um_plugin.core`` is the method in plain torch; ``um_plugin.openood`` (imported on demand,
never from here) registers ``um`` / ``umap`` with OpenOOD.
"""
from .core import *  # noqa: F401,F403
from .core import __all__

__version__ = "0.1.0"
