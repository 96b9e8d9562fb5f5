"""Estimate the loss constraint xi: the ID training loss of the model under a random mask.

The official ``estimate_loss.py`` masks the final-stage model with random popup scores that
keep 96.5% of each layer's weights and takes the mean cross-entropy over the training set.
The per-sample loss increase under the mask shows which ID samples the model memorised.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .batches import batch_indices, unpack_batch
from .distributed import all_reduce_sum, is_main_process
from .masks import (attach_score_masks, iter_score_masks, masks_disabled, remove_score_masks,
                    validate_keep_ratio)

OFFICIAL_ESTIMATE_KEEP_RATIO = 0.965


@dataclass
class XiEstimate:
    """ξ with what it was computed from; ``per_sample_increase`` is local to this rank."""

    xi: float
    xi_draws: list[float]
    base_loss: float
    keep_ratio: float
    num_samples: int
    sample_index: torch.Tensor = field(repr=False)
    per_sample_increase: torch.Tensor = field(repr=False)
    atypical: torch.Tensor = field(repr=False)

    @property
    def xi_std(self) -> float:
        return float(torch.tensor(self.xi_draws).std(unbiased=False)) if self.xi_draws else 0.0

    def summary(self) -> str:
        spread = f" ± {self.xi_std:.4g} over {len(self.xi_draws)} draws" if len(self.xi_draws) > 1 else ""
        return (f"xi = {self.xi:.4g}{spread} (random mask keeping {self.keep_ratio:.1%}; "
                f"unmasked train loss {self.base_loss:.4g}; {self.num_samples} samples)")


def _validate_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


@torch.no_grad()
def estimate_xi(model: nn.Module, loader, *, keep_ratio: float = OFFICIAL_ESTIMATE_KEEP_RATIO,
                seed: int = 0, draws: int = 1, top_n: int = 10, include=None,
                threshold: str = "layer", progress: bool = True) -> XiEstimate:
    """Mean CE of ``model`` on ``loader`` under ``draws`` random masks, averaged.

    Runs in eval mode without gradients and gives the model back as it came (no masks, same
    weights, same train/eval mode). Under torch.distributed, loss sums and counts are
    all-reduced, and every rank draws the same masks from ``seed``.
    """
    keep_ratio = validate_keep_ratio(keep_ratio)
    if _validate_positive_int("draws", draws) == 0:
        raise ValueError("draws must be at least 1, got 0")
    _validate_positive_int("top_n", top_n)
    if next(iter_score_masks(model), None) is not None:
        raise RuntimeError("estimate_xi needs an unmasked model; bake_masks() or "
                           "remove_score_masks() it first")
    was_training = model.training
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    try:
        attach_score_masks(model, keep_ratio, include=include, threshold=threshold,
                           generator=generator)
        masks = [m for _, _, m in iter_score_masks(model)]
        draw_scores = [[m.scores.detach().clone() for m in masks]]
        for _ in range(draws - 1):
            fresh = []
            for m in masks:
                s = torch.empty(m.scores.shape, dtype=m.scores.dtype)
                torch.nn.init.kaiming_uniform_(s, a=5 ** 0.5, generator=generator)
                fresh.append(s.to(device))
            draw_scores.append(fresh)

        sums = torch.zeros(draws + 2, dtype=torch.float64)  # per-draw loss, base loss, count
        indices, increases = [], []
        position = 0
        bar = tqdm(loader, desc="estimating xi", disable=not (progress and is_main_process()),
                   leave=False)
        for batch in bar:
            x, y = unpack_batch(batch)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with masks_disabled(model):
                base = F.cross_entropy(model(x), y, reduction="none")
            masked_total = torch.zeros_like(base)
            for d, scores in enumerate(draw_scores):
                if draws > 1:
                    for m, s in zip(masks, scores):
                        m.scores.copy_(s)
                masked = F.cross_entropy(model(x), y, reduction="none")
                sums[d] += masked.double().sum().item()
                masked_total += masked
            sums[draws] += base.double().sum().item()
            sums[draws + 1] += y.shape[0]
            indices.append(batch_indices(batch, position, y.shape[0]))
            increases.append((masked_total / draws - base).cpu())
            position += y.shape[0]
            if progress:
                bar.set_postfix(xi=f"{sums[:draws].mean().item() / sums[draws + 1].item():.4g}")
        if position == 0:
            raise ValueError("the loader yielded no batches; xi needs ID training data")
        sums = all_reduce_sum(sums.to(device)).cpu()
    finally:
        if next(iter_score_masks(model), None) is not None:
            remove_score_masks(model)
        model.train(was_training)

    count = sums[draws + 1].item()
    xi_draws = [sums[d].item() / count for d in range(draws)]
    index = torch.cat(indices)
    increase = torch.cat(increases)
    top = torch.topk(increase, min(top_n, increase.numel())).indices
    return XiEstimate(
        xi=sum(xi_draws) / draws, xi_draws=xi_draws, base_loss=sums[draws].item() / count,
        keep_ratio=keep_ratio, num_samples=int(count), sample_index=index,
        per_sample_increase=increase, atypical=index[top])
