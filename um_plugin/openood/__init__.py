"""UM and UMAP as first-class OpenOOD v1.5 methods (trainers and postprocessors).

Importing this package registers them with OpenOOD (see :func:`register`), so OpenOOD's own
YAML configs, ``main.py`` pipelines, ``Evaluator`` and ``scripts/eval_ood.py`` select them by
name. ``import um_plugin`` alone never imports OpenOOD; this package needs it installed.

Where a change belongs:

* ``registry/`` -- making a name OpenOOD looks up find ours. A new base postprocessor needs
  nothing (``um_<base>`` works for every name OpenOOD knows; ``names.py`` is the grammar); a
  new trainer name goes into ``register.py``'s trainer table and ``settings/options.py``'s
  ``TRAINER_NAMES``; a new network into ``networks.py``; benchmarks: ``datasets.py``.
* ``settings/`` -- a new option of both routes (``options.py`` converts, the core's
  ``FinetuneConfig`` owns the rule), what the log names as differing from the authors
  (``presets.py``), ξ and the fit check.
* ``training/`` -- Route 1 (``main.py``): a new trainer class goes in ``trainers.py``.
* ``postprocessing/`` -- Route 2 (``Evaluator``): the ``um``/``umap`` postprocessors, and
  OpenOOD's parameter search over UM's own settings (``sweep.py`` reads, ``search.py`` runs).
* ``evaluation/`` -- ``um-openood eval``'s planning and scoring; the table and gate are
  :mod:`um_plugin.leaderboard`'s, and a new CLI verb is a module in :mod:`um_plugin.cli`.
* ``cpu.py`` -- the CPU fallback for OpenOOD's ``.cuda()`` calls, used by every route.
"""
from .registry.layout import OpenOODLayoutError, OpenOODNotInstalledError, require_openood

require_openood()  # one clear line when OpenOOD is missing, before any module imports it

from .registry.datasets import (register_benchmark, unregister_benchmark,  # noqa: E402
                                write_dataset_config)
from .cpu import disable_cpu_fallback, enable_cpu_fallback, use_cpu  # noqa: E402
from .postprocessing.postprocessors import UMAPPostprocessor, UMPostprocessor  # noqa: E402
from .registry.register import RegistrationError, is_registered, register  # noqa: E402
from .settings.reuse import NetworkReuseError  # noqa: E402
from .training.trainers import UMAPTrainer, UMTrainer  # noqa: E402
from .settings.fit_check import FitCheckError, FitCheckWarning  # noqa: E402

register()

__all__ = [
    "register", "is_registered", "register_benchmark", "unregister_benchmark",
    "write_dataset_config", "use_cpu", "enable_cpu_fallback", "disable_cpu_fallback", "UMTrainer",
    "UMAPTrainer", "UMPostprocessor", "UMAPPostprocessor", "OpenOODNotInstalledError",
    "OpenOODLayoutError", "RegistrationError", "NetworkReuseError", "FitCheckError", "FitCheckWarning",
]
