"""Opt-in CPU fallback so OpenOOD's hard-coded ``.cuda()`` calls run on a machine without a GPU.

OpenOOD calls ``tensor.cuda()`` / ``module.cuda()`` unconditionally (trainers, evaluators,
postprocessors, ``scripts/eval_ood.py``). CI benchmark runs have no GPU, so while the fallback
is on those calls return the object unchanged, ``torch.cuda.device_count()`` reports 0 (so
``nn.DataParallel`` wraps nothing) and ``torch.load`` maps GPU-saved checkpoints to the CPU
(``get_network`` loads them without ``map_location``). Nothing is patched unless this is called; GPU runs never
see it. :func:`use_cpu` is the name users call (the Python twin of ``um-openood run --cpu``).
"""
from __future__ import annotations

import contextlib

import torch

_PATCHED: dict = {}  # (owner, attribute) -> original; empty while the fallback is off


def _stay(self, *args, **kwargs):
    """``.cuda()`` replacement: the object stays where it is (on the CPU)."""
    return self


def _no_devices() -> int:
    return 0


def _load_to_cpu(load):
    def cpu_load(*args, **kwargs):
        if len(args) < 2 and kwargs.get("map_location") is None:
            kwargs["map_location"] = "cpu"
        return load(*args, **kwargs)
    return cpu_load


def _patches():
    return [
        (torch.Tensor, "cuda", _stay),
        (torch.nn.Module, "cuda", _stay),
        (torch.cuda, "device_count", _no_devices),
        (torch, "load", _load_to_cpu(torch.load)),
    ]


def cpu_fallback_enabled() -> bool:
    """Whether ``.cuda()`` is currently a no-op."""
    return bool(_PATCHED)


def enable_cpu_fallback() -> contextlib.AbstractContextManager:
    """Make ``.cuda()`` a no-op (idempotent); the returned context manager undoes it on exit.

    Use as a call (``enable_cpu_fallback()``, stays on for the process, e.g. in the CLI) or as
    ``with enable_cpu_fallback(): ...`` (on only inside the block, e.g. in tests). Refused when a
    GPU is present, so a real GPU run can never silently fall back to the CPU.
    """
    if torch.cuda.is_available() and not _PATCHED:
        raise RuntimeError(
            f"enable_cpu_fallback() refused: {torch.cuda.device_count()} CUDA device(s) are "
            "available; run without --cpu to use them, or hide them with CUDA_VISIBLE_DEVICES=''")
    owned = not _PATCHED
    if owned:
        for owner, name, replacement in _patches():
            _PATCHED[(owner, name)] = getattr(owner, name)
            setattr(owner, name, replacement)
    return _Restore(owned)


use_cpu = enable_cpu_fallback
"""``um_plugin.openood.use_cpu()``: run OpenOOD's GPU-only code (the ``Evaluator``, its
postprocessors, ``main.py``'s trainers) on a machine without a GPU; the CLI's ``--cpu``."""


def require_device(what: str) -> None:
    """Refuse, before any work, a route OpenOOD would run into ``.cuda()`` on a GPU-less
    machine (it would crash there only after the fine-tuning, leaving the model changed)."""
    if not torch.cuda.is_available() and not _PATCHED:
        raise RuntimeError(
            f"{what} needs a CUDA GPU (OpenOOD calls .cuda()) and none is available; on a "
            "CPU-only machine call um_plugin.openood.use_cpu() first")


def disable_cpu_fallback() -> None:
    """Give ``.cuda()`` and ``torch.cuda.device_count`` their originals back."""
    while _PATCHED:
        (owner, name), original = _PATCHED.popitem()
        setattr(owner, name, original)


class _Restore(contextlib.AbstractContextManager):
    """Undo the fallback on exit, but only if this call was the one that switched it on."""

    def __init__(self, owned: bool):
        self.owned = owned

    def __exit__(self, *exc):
        if self.owned:
            disable_cpu_fallback()
        return False
