"""ξ for the OpenOOD routes: fixed or estimated, logged with the unmasked accuracy, checked.

ξ is the model's mean training loss under a random mask. If the loader it is estimated on
does not show the model images it fits (OpenOOD's train preprocessor flips and crops; a base
trained without augmentation scores far lower there), ξ comes out far too high and
fine-tuning under it wrecks the model. So the log line reports the unmasked accuracy on that
loader next to the accuracy on ID validation data, and when the first is more than
``xi_accuracy_margin`` below the second, a warning names both and the fix.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from um_plugin.core.batches import unpack_batch
from um_plugin.core.distributed import all_reduce_sum, is_main_process
from um_plugin.core.xi import estimate_xi

from .options import XiOptions


class XiSanityWarning(UserWarning):
    """ξ was estimated on a loader the model fits far worse than its ID validation data."""


def _log(line: str) -> None:
    if is_main_process():
        print(line, flush=True)


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
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
        raise ValueError("the ID validation loader yielded no samples")
    return float(counts[0] / counts[1])


def resolve_xi(model: nn.Module, loader, options: XiOptions, *, where: str, fix: str,
               reference=None) -> float:
    """ξ from ``options``, or estimated on ``loader`` (logged with the unmasked accuracy there
    and, given ``reference`` (ID validation data), checked against the accuracy on it).

    ``where`` names the config section (``trainer.trainer_args``); ``fix`` says what to do
    when the check fails.
    """
    if options.value is not None:
        _log(f"[um-plugin] loss constraint xi = {options.value:.6g} (from {where}.loss_constraint)")
        return options.value
    estimate = estimate_xi(model, loader, **options.estimate_kwargs, progress=is_main_process(),
                           report=True)
    base = estimate.base_accuracy
    line = (f"[um-plugin] loss constraint estimated: {estimate.summary()}; unmasked accuracy "
            f"{base:.1%} on the loader xi was estimated on")
    reference_accuracy = None if reference is None else accuracy(model, reference)
    if reference_accuracy is not None:
        line += f", {reference_accuracy:.1%} on ID validation data"
    _log(line)
    if reference_accuracy is not None and base < reference_accuracy - options.accuracy_margin:
        message = (
            f"[um-plugin] WARNING: the model's unmasked accuracy on the loader xi was estimated "
            f"on is {base:.1%}, {100 * (reference_accuracy - base):.1f} points below its "
            f"{reference_accuracy:.1%} on ID validation data (more than {where}."
            f"xi_accuracy_margin = {options.accuracy_margin:g}): it does not fit those images "
            f"(train-time augmentation? wrong labels?), so xi = {estimate.xi:.4g} is too high and "
            f"fine-tuning under it can wreck the model. Fix: {fix}")
        if is_main_process():
            warnings.warn(message, XiSanityWarning, stacklevel=2)
        _log(message)
    return estimate.xi
