"""ξ for the OpenOOD routes, and the check that the model fits the images it will train on.

UM fine-tunes under ξ, the model's own training loss under a random mask. If the images the
route trains on are not ones the model fits (OpenOOD's train preprocessor flips and crops; a
base trained without augmentation scores far lower there; wrong labels), ξ comes out far too
high and the loss the engine fits is not the model's: fine-tuning wrecks it. So before any
fine-tuning the route measures the unmasked accuracy on those images and on ID validation data;
when the first is more than ``fit_margin`` below the second the run stops (``fit_check:
stop``, the default) with one line naming both and the fix, or warns and goes on (``warn``).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
from torch import nn

from um_plugin.core.batches import unpack_batch
from um_plugin.core.distributed import all_reduce_sum, is_main_process
from um_plugin.core.xi import estimate_xi
from um_plugin.leaderboard.runs import STOP_MARKER

from um_plugin.openood.settings.options import DataOptions, RouteStop, XiOptions


class FitCheckError(RouteStop):
    """The model does not fit the images the route would fine-tune it on; nothing was trained."""


class FitCheckWarning(UserWarning):
    """As :class:`FitCheckError`, with ``fit_check: warn``: the run goes on."""


def log(line: str) -> None:
    if is_main_process():
        print(line, flush=True)


@torch.no_grad()
def accuracy(model: nn.Module, loader, what: str = "the ID validation loader") -> float:
    """Top-1 accuracy of ``model`` on ``loader`` in eval mode, summed over ranks; every
    module's train/eval flag is given back as it was."""
    flags = [(m, m.training) for m in model.modules()]
    device = next(model.parameters()).device
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    model.eval()
    try:
        for batch in loader:
            x, y = unpack_batch(batch)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            counts[0] += (model(x).argmax(1) == y).sum()
            counts[1] += y.numel()
    finally:
        for module, flag in flags:
            module.training = flag
    counts = all_reduce_sum(counts)
    if counts[1] == 0:
        raise ValueError(f"{what} yielded no samples")
    return float(counts[0] / counts[1])


def mark_stopped(run_dir, reason: str) -> None:
    """Leave the reason in a run folder the fit check stopped, so ``um-openood eval --root``
    skips it in one line instead of refusing a folder without ``best.ckpt``."""
    if is_main_process() and run_dir and os.path.isdir(run_dir):
        with open(os.path.join(run_dir, STOP_MARKER), "w") as f:
            f.write(f"fit check: {reason}\n")


def check_fit(model: nn.Module, loader, data: DataOptions, reference, *, where: str,
              syntax: str) -> None:
    """Stop (or warn) when ``model`` fits ``loader``'s images much worse than ``reference``'s
    (ID validation data); runs before ξ, so a model that does not fit stops without it."""
    fit = accuracy(model, loader, f"the {data.preprocessing!r} training loader")
    reference_accuracy = accuracy(model, reference)
    seen = (f"training images with {data.preprocessing}-time preprocessing "
            f"({where}.preprocessing: {data.preprocessing})")
    log(f"[um-plugin] fit check: unmasked accuracy {fit:.1%} on the {seen}, "
        f"{reference_accuracy:.1%} on ID validation data")
    if fit >= reference_accuracy - data.fit_margin:
        return
    other = "test" if data.preprocessing == "train" else "train"
    message = (
        f"the model's accuracy on the {seen} is {fit:.1%}, {100 * (reference_accuracy - fit):.1f} "
        f"points below its {reference_accuracy:.1%} on ID validation data (more than fit_margin "
        f"= {data.fit_margin:g}): it does not fit the images it would be fine-tuned on (trained "
        f"without augmentation? wrong labels?), so xi would be far too high and fine-tuning "
        f"would wreck it. Fix: {syntax.format(key='preprocessing', value=other)}, or "
        f"{syntax.format(key='fit_check', value='warn')} to fine-tune anyway")
    if data.fit_check == "stop":
        raise FitCheckError(message)
    if is_main_process():
        warnings.warn(message, FitCheckWarning, stacklevel=3)
    log(f"[um-plugin] WARNING (fit_check: warn, going on): {message}")


def prepare_xi(model: nn.Module, loader, xi: XiOptions, data: DataOptions, *, where: str,
               reference=None, syntax: Optional[str] = None) -> float:
    """ξ (given, or estimated on ``loader``), after checking that ``model`` fits ``loader``'s
    images about as well as ``reference`` (ID validation data); logs both.

    ``where`` names the config section (``trainer.trainer_args``); ``syntax`` how a setting
    is changed where the route runs (default ``'set <where>.{key}: {value}'``; eval: ``--set``)."""
    syntax = syntax or f"set {where}.{{key}}: {{value}}"
    if reference is not None:
        check_fit(model, loader, data, reference, where=where, syntax=syntax)
    if xi.value is not None:
        value, source = xi.value, f"xi = {xi.value:.6g} (from {where}.loss_constraint)"
    else:
        estimate = estimate_xi(model, loader, **xi.estimate_kwargs, progress=is_main_process(),
                               report=True)
        value, source = estimate.xi, f"estimated: {estimate.summary()}"
    skipped = "; no ID validation loader, so the fit check is skipped" if reference is None else ""
    log(f"[um-plugin] loss constraint {source}{skipped}")
    return value
