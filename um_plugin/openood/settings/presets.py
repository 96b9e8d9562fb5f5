"""What a route runs, said against the authors' setting, so a result is never reported under
UM's name without saying what differs from the published method.

The authors' setting is what their code runs (github.com/ZFancy/Unleashing-Mask, CIFAR configs):
the core's ``FinetuneConfig`` defaults, batch 256, the augmented training images, ξ estimated
with one random mask keeping 96.5%, fp32, and OOD scores on the final epoch's model. With
outliers (``main_OE.py``, ``configs/OE/oe-baseline.yaml``): 10 epochs at lr 0.01, outlier
batches of 256 beside the ID ones, ``oe`` weighted 0.5 or ``energy`` with m_in -25, m_out -7,
energy_beta 0.1. The paper's text differs from the code in one place (it says Nesterov momentum;
the code never sets it).

Settings their code has no counterpart of are named when they differ from the shipped YAMLs:
``seed`` (UMAP's initial scores; the authors draw them from their global RNG), ``xi_seed``,
``fit_check`` / ``fit_margin`` (a check before training; it changes no result when it passes).
UMAP's initial scores and ξ's random mask are both kaiming-uniform draws: with ``seed`` equal to
``xi_seed`` they are the same draw (UMAP's first mask then keeps the top of ξ's mask), which the
log names; the shipped UMAP YAMLs set ``seed: 1`` so they are independent, as in the authors' two
separate scripts. The core keeps both defaults at 0 so earlier results stay reproducible.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Optional

from um_plugin.core import FinetuneConfig
from um_plugin.core.distributed import is_main_process
from um_plugin.core.xi import OFFICIAL_ESTIMATE_KEEP_RATIO

from um_plugin.openood.settings.options import DEFAULT_FIT_MARGIN, MethodOptions

AUTHORS_BATCH_SIZE = 256
AUTHORS_PREPROCESSING = "train"
AUTHORS_XI_DRAWS = 1
AUTHORS_OE = {"epochs": 10, "lr": 0.01}  # configs/OE/oe-baseline.yaml
SHIPPED_XI_SEED = 0
SHIPPED_UMAP_SEED = 1  # not xi_seed: UMAP's scores independent of ξ's mask
# fields that are a run's plumbing, or named below in their own words
_NOT_COMPARED = ("mode", "progress", "seed", "include")


def shipped_seed(mode: str) -> int:
    """``seed`` in the shipped YAMLs: UMAP's scores apart from ξ's mask; UM's loader order."""
    return SHIPPED_UMAP_SEED if mode == "umap" else 0


def authors_config(mode: str, outlier_loss: str = "none") -> FinetuneConfig:
    """The authors' setting for ``mode`` (with ``outlier_loss``: their main_OE.py)."""
    extra = {} if outlier_loss == "none" else {**AUTHORS_OE, "outlier_loss": outlier_loss}
    return FinetuneConfig(mode=mode, **extra)


def _compared(mine: FinetuneConfig) -> list[str]:
    authors = authors_config(mine.mode, mine.outlier_loss)
    skip = set(_NOT_COMPARED)
    skip.add("freeze_weights")  # the authors use both (True on CIFAR-10, False on CIFAR-100)
    if mine.mode == "um":
        skip |= {"keep_ratio", "threshold"}
    if mine.outlier_loss != "oe":
        skip.add("lambda_oe")
    if mine.outlier_loss != "energy":
        skip |= {"energy_beta", "m_in", "m_out"}
    return [f"{f.name} {getattr(mine, f.name)!r} (authors: {getattr(authors, f.name)!r})"
            for f in fields(FinetuneConfig)
            if f.name not in skip and getattr(mine, f.name) != getattr(authors, f.name)]


def _own_settings(options: MethodOptions, xi_seed: int) -> list[str]:
    """Settings without a counterpart in the authors' code, named when not as shipped."""
    mine, out = options.finetune, []
    if mine.mode == "umap" and mine.include is not None:
        out.append(f"include {list(mine.include)} (authors: every Conv2d/Linear layer masked)")
    if mine.mode == "umap" and options.xi.value is None and mine.seed == xi_seed:
        out.append(f"seed {mine.seed} = xi_seed: UMAP's initial scores are the draw of ξ's mask "
                   f"(authors: independent draws; shipped: seed {SHIPPED_UMAP_SEED})")
    elif mine.seed != shipped_seed(mine.mode):
        out.append(f"seed {mine.seed} (shipped: {shipped_seed(mine.mode)}; the authors' code "
                   "draws from its global RNG)")
    if xi_seed != SHIPPED_XI_SEED and options.xi.value is None:
        out.append(f"xi_seed {xi_seed} (shipped: {SHIPPED_XI_SEED})")
    if options.data.fit_check != "stop" or options.data.fit_margin != DEFAULT_FIT_MARGIN:
        out.append(f"fit_check {options.data.fit_check!r} with fit_margin "
                   f"{options.data.fit_margin:g} (shipped: 'stop', {DEFAULT_FIT_MARGIN:g}; the "
                   "authors' code has no fit check)")
    return out


def differences(options: MethodOptions, batch_size: Optional[int],
                oe_batch_size: Optional[int] = None, world_size: int = 1) -> list[str]:
    """``'name value (authors: value)'`` for each setting that is not the authors'.

    ``batch_size`` is per process; with ``world_size`` > 1 processes the line names both, since
    each rank's loss ``|CE - xi| + xi`` is taken on its own batch, not on the global one.
    """
    out = _compared(options.finetune)
    if batch_size is not None and world_size > 1:
        out.append(f"world size {world_size} x batch_size {batch_size} = global batch "
                   f"{world_size * batch_size} (authors: one process, batch {AUTHORS_BATCH_SIZE})")
    elif batch_size is not None and batch_size != AUTHORS_BATCH_SIZE:
        out.append(f"batch_size {batch_size} (authors: {AUTHORS_BATCH_SIZE})")
    if oe_batch_size is not None and oe_batch_size != AUTHORS_BATCH_SIZE:
        out.append(f"OE batch_size {oe_batch_size} (authors: {AUTHORS_BATCH_SIZE}, "
                   "batch_size * ood_factor 1)")
    if options.data.preprocessing != AUTHORS_PREPROCESSING:
        out.append(f"preprocessing {options.data.preprocessing!r} (authors: "
                   f"{AUTHORS_PREPROCESSING!r}, the augmented training loader)")
    xi = options.xi
    if xi.value is not None:
        out.append(f"loss_constraint {xi.value:g} (authors: estimated)")
    else:
        if xi.keep_ratio != OFFICIAL_ESTIMATE_KEEP_RATIO:
            out.append(f"xi_keep_ratio {xi.keep_ratio:g} (authors: "
                       f"{OFFICIAL_ESTIMATE_KEEP_RATIO})")
        if xi.draws != AUTHORS_XI_DRAWS:
            out.append(f"xi_draws {xi.draws} (authors: {AUTHORS_XI_DRAWS} random mask)")
    return out + _own_settings(options, xi.seed)


def log_differences(options: MethodOptions, who: str, *, batch_size: Optional[int],
                    oe_batch_size: Optional[int] = None, world_size: int = 1) -> list[str]:
    """Print one line: the authors' setting, or every way this run differs from it."""
    diffs = differences(options, batch_size, oe_batch_size, world_size)
    if is_main_process():
        if diffs:
            print(f"[um-plugin] {who} differs from the authors' setting in: {'; '.join(diffs)}",
                  flush=True)
        else:
            print(f"[um-plugin] {who} runs the authors' setting", flush=True)
    return diffs
