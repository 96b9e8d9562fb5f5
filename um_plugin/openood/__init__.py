"""UM and UMAP as first-class OpenOOD v1.5 methods (trainers and postprocessors).

Importing this package registers them with OpenOOD (see :func:`register`), so OpenOOD's own
YAML configs, ``main.py`` pipelines, ``Evaluator`` and ``scripts/eval_ood.py`` select them by
name. ``import um_plugin`` alone never imports OpenOOD; this package needs it installed.
"""
from .layout import OpenOODLayoutError, OpenOODNotInstalledError, require_openood

require_openood()  # one clear line when OpenOOD is missing, before any module imports it

from .benchmarks import (register_benchmark, unregister_benchmark,  # noqa: E402
                         write_dataset_config)
from .cpu import disable_cpu_fallback, enable_cpu_fallback, use_cpu  # noqa: E402
from .postprocessors import UMAPPostprocessor, UMPostprocessor  # noqa: E402
from .register import RegistrationError, is_registered, register  # noqa: E402
from .reuse import NetworkReuseError  # noqa: E402
from .trainers import UMAPTrainer, UMTrainer  # noqa: E402
from .fit_check import FitCheckError, FitCheckWarning  # noqa: E402

register()

__all__ = [
    "register", "is_registered", "register_benchmark", "unregister_benchmark",
    "write_dataset_config", "use_cpu", "enable_cpu_fallback", "disable_cpu_fallback", "UMTrainer",
    "UMAPTrainer", "UMPostprocessor", "UMAPPostprocessor", "OpenOODNotInstalledError",
    "OpenOODLayoutError", "RegistrationError", "NetworkReuseError", "FitCheckError", "FitCheckWarning",
]
