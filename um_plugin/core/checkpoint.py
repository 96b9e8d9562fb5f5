"""Checkpoint files: atomic writes, readable errors, and what a loader's data order depends on.

A save goes to ``.<name>.tmp`` beside the target and is renamed over it, so a killed save never
loses the previous checkpoint and leaves at most one stale temporary file, which the next save
replaces. Files are created with the process umask (not mkstemp's 0600).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def check_writable(path) -> Path:
    """Fail now, naming ``path``, if a checkpoint could not be written there later."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint path {str(path)!r} is a folder; pass a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = _tmp_path(path)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"checkpoint path {str(path)!r} is not writable ({err.strerror or err}); "
                         "pass a path in a writable folder") from None
    return path


def write_state(state: dict, path) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_state(path, map_location=None) -> dict:
    """Load a um-plugin checkpoint, or raise one ValueError naming the file and the cause."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError) as err:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {err}); "
                         "it is truncated or not a torch file -- use an earlier checkpoint or "
                         "start a new run") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"{str(path)!r} is not a um-plugin fine-tuning checkpoint "
                         "(written by save_checkpoint)")
    return state


def save_checkpoint(tuner, path) -> Path:
    """Write a :class:`~um_plugin.core.finetune.Finetuner`'s state so it resumes bit-exactly."""
    return write_state(tuner.state_dict(), path)


def loader_generators(loader) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a loader's data order depends on (deduplicated).

    A ``DataLoader(shuffle=True, generator=g)`` draws its order and worker seeds from ``g``,
    not from the global RNG, so resuming bit-exactly needs ``g``'s state too.
    """
    found, seen = [], set()
    candidates = [getattr(loader, "generator", None),
                  getattr(getattr(loader, "sampler", None), "generator", None),
                  getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None),
                          "generator", None)]
    for g in candidates:
        if isinstance(g, torch.Generator) and id(g) not in seen:
            seen.add(id(g))
            found.append(g)
    return found
