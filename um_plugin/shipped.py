"""The YAMLs this package ships: where they are, and copying them into OpenOOD's configs tree.

A leaf that imports no OpenOOD: the CLI lists and installs them, and the adapter reads its
postprocessors' defaults from the same folder.
"""
from __future__ import annotations

import os
import shutil
from importlib import resources


def configs_root() -> str:
    """Folder of the shipped YAMLs (``train_*.yml``, ``postprocessors/*.yml``)."""
    return str(resources.files("um_plugin").joinpath("openood", "configs"))


def shipped_configs() -> list:
    """Paths of the shipped YAMLs, relative to :func:`configs_root`."""
    root = configs_root()
    out = []
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".yml"):
                out.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(out)


def openood_destination(rel: str) -> str:
    """Where a shipped YAML goes in OpenOOD's tree: pipeline configs under pipelines/train/."""
    if os.path.dirname(rel) == "" and os.path.basename(rel).startswith("train_"):
        return os.path.join("pipelines", "train", rel)
    return rel


def install_configs(dest: str, force: bool = False) -> list:
    """Copy the shipped YAMLs into an OpenOOD ``configs/`` tree; return the written paths.

    ``train_um[ap].yml`` land in ``pipelines/train/``, ``um[ap].yml`` in ``postprocessors/``.

    Refuses to overwrite a different existing file unless ``force`` (checked for every file
    before any is written).
    """
    if not os.path.isdir(dest):
        raise FileNotFoundError(f"{dest!r} is not a folder; pass OpenOOD's configs/ directory")
    plan = []
    for rel in shipped_configs():
        src, target = os.path.join(configs_root(), rel), os.path.join(dest, openood_destination(rel))
        if os.path.exists(target) and not force:
            with open(src, "rb") as a, open(target, "rb") as b:
                if a.read() == b.read():
                    continue
            raise FileExistsError(f"{target!r} exists and differs from the shipped {rel}; "
                                  "pass --force to overwrite it")
        plan.append((src, target))
    for src, target in plan:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(src, target)
    return [target for _, target in plan]
