"""UM and UMAP as first-class OpenOOD v1.5 methods (trainers and postprocessors).

Importing this package registers them with OpenOOD (see :func:`register`), so OpenOOD's own
YAML configs, ``main.py`` pipelines, ``Evaluator`` and ``scripts/eval_ood.py`` select them by
name. ``import um_plugin`` alone never imports OpenOOD; this package needs it installed.
"""
from .register import (OpenOODLayoutError, OpenOODNotInstalledError, RegistrationError,
                       is_registered, register)

register()

from .benchmarks import register_benchmark, unregister_benchmark  # noqa: E402
from .cpu import disable_cpu_fallback, enable_cpu_fallback  # noqa: E402
from .postprocessors import UMAPPostprocessor, UMPostprocessor  # noqa: E402
from .trainers import UMAPTrainer, UMTrainer  # noqa: E402

__all__ = [
    "register", "is_registered", "register_benchmark", "unregister_benchmark",
    "enable_cpu_fallback", "disable_cpu_fallback", "UMTrainer", "UMAPTrainer",
    "UMPostprocessor", "UMAPPostprocessor", "OpenOODNotInstalledError", "OpenOODLayoutError",
    "RegistrationError",
]
