"""What ``um_plugin.openood`` needs installed: OpenOOD and every module it imports at run time.

Checked with ``importlib.util.find_spec`` (nothing is imported), so a machine missing several
of them hears about all of them at once, in one line with the command that installs them,
instead of one traceback per ``pip install``. A leaf: the test suite reads it to skip the
OpenOOD tests without importing the adapter.
"""
from __future__ import annotations

import importlib.util

# import name -> what installs it (install.sh installs all of them)
OPENOOD_RUNTIME = {
    "openood": "OpenOOD v1.5, from git",
    "libmr": "no wheel: built against numpy",
    "cv2": "opencv-python-headless",
    "diffdist": "diffdist",
    "faiss": "faiss-cpu",
    "foolbox": "foolbox",
    "gdown": "gdown",
    "imgaug": "imgaug",
    "pandas": "pandas",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "statsmodels": "statsmodels",
    "timm": "timm",
    "yaml": "pyyaml",
}

INSTALL_COMMAND = "bash install.sh (from the um-plugin checkout; --openood SRC for a local OpenOOD)"


def missing_openood_runtime() -> list:
    """Import names of :data:`OPENOOD_RUNTIME` that cannot be found, in that order."""
    missing = []
    for name in OPENOOD_RUNTIME:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package that fails, or sys.modules[name] = None
            found = False
        if not found:
            missing.append(name)
    return missing


def openood_missing_message(missing: list) -> str:
    """The one line that names everything missing and how to install it."""
    names = ", ".join(f"{name} ({OPENOOD_RUNTIME[name]})" for name in missing)
    return f"um_plugin.openood needs OpenOOD and the packages it imports; missing: {names}; install them with: {INSTALL_COMMAND}"
