"""What a route runs, said against the authors' setting, so a result is never reported under
UM's name without saying what differs from the published method.

The authors' setting is what their code runs (github.com/ZFancy/Unleashing-Mask, CIFAR configs):
the core's ``FinetuneConfig`` defaults, batch 256, the augmented training images, ξ estimated
with a random mask keeping 96.5%, and OOD scores on the final epoch's model. The paper's text
differs from the code in one place (it says Nesterov momentum; the code never sets it).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Optional

from um_plugin.core import FinetuneConfig
from um_plugin.core.distributed import is_main_process
from um_plugin.core.xi import OFFICIAL_ESTIMATE_KEEP_RATIO

from .options import MethodOptions

AUTHORS_BATCH_SIZE = 256
AUTHORS_PREPROCESSING = "train"
# fields that are a run's plumbing, not part of the method's setting
_NOT_SETTINGS = ("mode", "progress", "seed", "precision")


def differences(options: MethodOptions, batch_size: Optional[int]) -> list[str]:
    """``'name value (authors: value)'`` for each setting that is not the authors'."""
    mine = options.finetune
    authors = FinetuneConfig(mode=mine.mode)
    out = []
    for f in fields(FinetuneConfig):
        # freeze_weights: the authors use both (True on CIFAR-10, False on CIFAR-100)
        if f.name in _NOT_SETTINGS + ("freeze_weights",) or (
                mine.mode == "um" and f.name in ("keep_ratio", "threshold")):
            continue
        value, theirs = getattr(mine, f.name), getattr(authors, f.name)
        if value != theirs:
            out.append(f"{f.name} {value!r} (authors: {theirs!r})")
    if batch_size is not None and batch_size != AUTHORS_BATCH_SIZE:
        out.append(f"batch_size {batch_size} (authors: {AUTHORS_BATCH_SIZE})")
    if options.data.preprocessing != AUTHORS_PREPROCESSING:
        out.append(f"preprocessing {options.data.preprocessing!r} (authors: "
                   f"{AUTHORS_PREPROCESSING!r}, the augmented training loader)")
    if options.xi.value is not None:
        out.append(f"loss_constraint {options.xi.value:g} (authors: estimated)")
    else:
        if options.xi.keep_ratio != OFFICIAL_ESTIMATE_KEEP_RATIO:
            out.append(f"xi_keep_ratio {options.xi.keep_ratio:g} (authors: "
                       f"{OFFICIAL_ESTIMATE_KEEP_RATIO})")
    return out


def log_differences(options: MethodOptions, who: str, *, batch_size: Optional[int]) -> list[str]:
    """Print one line: the authors' setting, or every way this run differs from it."""
    diffs = differences(options, batch_size)
    if is_main_process():
        if diffs:
            print(f"[um-plugin] {who} differs from the authors' setting in: {'; '.join(diffs)}",
                  flush=True)
        else:
            print(f"[um-plugin] {who} runs the authors' setting", flush=True)
    return diffs
