"""Estimate the loss constraint xi: the ID training loss of the model under a random mask.

The official ``estimate_loss.py`` masks the final-stage model with random popup scores that
keep 96.5% of each layer's weights and takes the mean cross-entropy over the training set.
With ``report=True`` the unmasked model runs too, and the per-sample loss increase under the
mask shows which ID samples the model memorised (the atypical ones).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .batches import batch_indices, unpack_batch
from .distributed import all_reduce_sum, is_distributed, is_main_process
from .masks import (THRESHOLDS, attach_score_masks, has_score_masks, iter_score_masks,
                    masks_disabled, remove_score_masks, validate_keep_ratio)

OFFICIAL_ESTIMATE_KEEP_RATIO = 0.965


@dataclass
class XiEstimate:
    """ξ with what it was computed from; the report fields are None unless ``report=True``.

    ``per_sample_increase`` (masked minus unmasked loss) and ``sample_index`` are local to
    this rank under torch.distributed; every other number is over all ranks.
    """

    xi: float
    xi_draws: list[float]
    keep_ratio: float
    num_samples: int
    masked_accuracy: float
    base_loss: float | None = None
    base_accuracy: float | None = None
    sample_index: torch.Tensor | None = field(default=None, repr=False)
    per_sample_increase: torch.Tensor | None = field(default=None, repr=False)
    atypical: torch.Tensor | None = field(default=None, repr=False)

    @property
    def xi_std(self) -> float:
        return float(torch.tensor(self.xi_draws).std(unbiased=False)) if self.xi_draws else 0.0

    def summary(self) -> str:
        """One line for logs: ξ, its spread over draws, accuracies and the unmasked loss."""
        spread = (f" ± {self.xi_std:.4g} over {len(self.xi_draws)} draws"
                  if len(self.xi_draws) > 1 else "")
        parts = [f"random mask keeping {self.keep_ratio:.1%}",
                 f"masked train accuracy {self.masked_accuracy:.2%}"]
        if self.base_loss is not None:
            parts.append(f"unmasked train loss {self.base_loss:.4g}, "
                         f"accuracy {self.base_accuracy:.2%}")
        parts.append(f"{self.num_samples} samples")
        return f"xi = {self.xi:.4g}{spread} ({'; '.join(parts)})"


def _validate_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _validate_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _label_error(batch: int, low, high, classes: int) -> ValueError:
    return ValueError(
        f"labels of batch {batch} range over [{low}, {high}] but the model has {classes} "
        f"outputs: every label must be a class index in [0, {classes - 1}] (ignore_index "
        "labels such as -100 are refused: xi averages the loss over every sample)")


@torch.no_grad()
def estimate_xi(model: nn.Module, loader, *, keep_ratio: float = OFFICIAL_ESTIMATE_KEEP_RATIO,
                seed: int = 0, draws: int = 1, top_n: int = 10, include=None,
                threshold: str = "layer", progress: bool = True,
                report: bool = False) -> XiEstimate:
    """Mean CE of ``model`` on ``loader`` under ``draws`` random masks, averaged.

    One masked forward per batch and draw; ``report=True`` adds one unmasked forward per
    batch and fills ``base_loss``, ``base_accuracy``, ``per_sample_increase`` and the
    ``top_n`` most ``atypical`` sample indices. ξ is the same either way. Runs in eval mode
    without gradients and gives the model back as it came (no masks, same weights, same
    parameter order, every module's train/eval flag). Under torch.distributed, sums and
    counts are all-reduced, every rank draws the same masks from ``seed`` and every rank
    raises the same error. Labels must be class indices of the model's outputs; a
    non-finite loss raises, naming the batch. No host-device sync per batch.
    """
    keep_ratio = validate_keep_ratio(keep_ratio)
    _validate_count("draws", draws, 1)
    _validate_count("top_n", top_n, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    _validate_flag("progress", progress)
    _validate_flag("report", report)
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
    if has_score_masks(model):
        raise RuntimeError("estimate_xi needs an unmasked model; bake_masks() or "
                           "remove_score_masks() it first")
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError(f"{type(model).__name__} has no parameters: estimate_xi needs the "
                         "trained classifier (with Conv2d/Linear layers) to mask")
    device = first.device
    modes = [(m, m.training) for m in model.modules()]
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    try:
        attach_score_masks(model, keep_ratio, include=include, threshold=threshold,
                           generator=generator)
        masks = [m for _, _, m in iter_score_masks(model)]
        draw_states = _draw_states(masks, draws, generator, device)
        totals, index, increase, problem = _run(model, loader, masks, draw_states, device,
                                                report, progress)
    finally:
        if has_score_masks(model):
            remove_score_masks(model)
        for module, flag in modes:
            module.training = flag

    if problem is not None:
        raise problem
    count = totals["count"]
    xi_draws = [v / count for v in totals["loss"]]
    estimate = XiEstimate(xi=sum(xi_draws) / draws, xi_draws=xi_draws, keep_ratio=keep_ratio,
                          num_samples=int(count),
                          masked_accuracy=sum(totals["correct"]) / (draws * count))
    if report:
        estimate.base_loss = totals["base_loss"] / count
        estimate.base_accuracy = totals["base_correct"] / count
        estimate.sample_index, estimate.per_sample_increase = index, increase
        top = torch.topk(increase, min(top_n, increase.numel())).indices
        estimate.atypical = index[top]
    return estimate


def _draw_states(masks, draws, generator, device):
    """Scores and their masks for each draw (draw 0 is the attached one); [] for one draw."""
    if draws == 1:
        return []
    group = masks[0].group
    states = []
    for d in range(draws):
        if d:
            for m in masks:
                s = torch.empty(m.scores.shape, dtype=m.scores.dtype)
                torch.nn.init.kaiming_uniform_(s, a=5 ** 0.5, generator=generator)
                m.scores.copy_(s.to(device))
        group.refresh()
        states.append([(m.scores.detach().clone(), m.mask.clone()) for m in masks])
    return states


def _run(model, loader, masks, draw_states, device, report, progress):
    """The pass over the data: totals over ranks, report tensors, and the error to raise."""
    draws = max(1, len(draw_states))
    group = masks[0].group
    strict = not is_distributed()  # alone, a bad CPU label can stop the pass at once
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    rows, batch_ids, indices, increases = [], [], [], []
    host_bad = None  # (batch, low, high, classes) of the first bad CPU labels
    position, running = 0, 0.0
    show_xi = progress and device.type == "cpu"  # a live value would sync other devices
    try:
        length = len(loader)
    except TypeError:
        length = None
    # The bar never wraps the loader: tqdm.auto's constructor calls iter() on what it wraps,
    # which would start the workers and draw from a seeded DataLoader's generator once more.
    bar = tqdm(total=length, desc="estimating xi",
               disable=not (progress and is_main_process()), leave=False)
    for i, batch in enumerate(loader):
        bar.update(1)
        x, y = unpack_batch(batch)
        size = y.shape[0]
        if size == 0:
            continue
        x = x.to(device, non_blocking=True)
        if report:
            with masks_disabled(model):
                base_logits = _logits(model(x), size)
        loss_sums, correct, total = [], [], None
        for d in range(draws):
            if draw_states:
                for m, (scores, mask) in zip(masks, draw_states[d]):
                    m.scores.copy_(scores)
                    m.mask.copy_(mask)
                group.mark_fresh()
            logits = _logits(model(x), size)
            if d == 0:
                classes = logits.shape[1]
                if _readable_without_sync(y):
                    low, high = int(y.min()), int(y.max())
                    if low < 0 or high >= classes:
                        host_bad = host_bad or (i, low, high, classes)
                        if strict:
                            raise _label_error(i, low, high, classes)
                y_dev = y.to(device, non_blocking=True)
                valid = (y_dev >= 0) & (y_dev < classes)
                y_safe = torch.where(valid, y_dev, torch.zeros_like(y_dev))
            masked = F.cross_entropy(logits, y_safe, reduction="none")
            loss_sums.append(masked.to(acc).sum())
            correct.append((logits.argmax(1) == y_safe).sum().to(acc))
            total = masked if total is None else total + masked
        row = loss_sums + correct + [(~valid).sum().to(acc)]
        if report:
            base = F.cross_entropy(base_logits, y_safe, reduction="none")
            row += [base.to(acc).sum(), (base_logits.argmax(1) == y_safe).sum().to(acc)]
            indices.append(batch_indices(batch, position, size))
            increases.append(total / draws - base)
        rows.append(torch.stack(row))
        batch_ids.append(i)
        position += size
        if show_xi:
            running += float(rows[-1][:draws].sum())
            bar.set_postfix(xi=f"{running / (draws * position):.4g}")

    bar.close()
    width = 2 * draws + 1 + (2 if report else 0)
    table = (torch.stack(rows).cpu().double() if rows
             else torch.zeros(0, width, dtype=torch.float64))
    not_finite = (~torch.isfinite(table).all(1)).nonzero().view(-1)
    first_bad = int(not_finite[0]) if not_finite.numel() else None  # a row of table
    local = torch.cat([table.sum(0), torch.tensor([float(position), float(first_bad is not None)],
                                                  dtype=torch.float64)])
    summed = all_reduce_sum(local.to(device)).cpu()
    totals = {"loss": summed[:draws].tolist(), "correct": summed[draws:2 * draws].tolist(),
              "count": float(summed[-2])}
    if report:
        totals["base_loss"], totals["base_correct"] = summed[2 * draws + 1:2 * draws + 3].tolist()
    problem = None
    if summed[-2] == 0:
        problem = ValueError(f"the loader ({type(loader).__name__}) yielded no samples (no "
                             "batches, or only empty ones); xi needs the ID training data")
    elif summed[2 * draws] > 0:
        if host_bad is not None:
            problem = _label_error(*host_bad)
        else:
            bad_rows = (table[:, 2 * draws] > 0).nonzero().view(-1)
            where = (f"batch {batch_ids[int(bad_rows[0])]}" if bad_rows.numel()
                     else "another rank's data")
            span = f"[0, {classes - 1}]" if position else "the model's classes"
            problem = ValueError(
                f"{int(summed[2 * draws])} labels (first in {where}) are outside {span}, the "
                "class indices of the model's outputs (ignore_index labels such as -100 are "
                "refused too: xi averages the loss over every sample)")
    elif summed[-1] > 0:
        if first_bad is not None:
            row = table[first_bad]
            which = "unmasked" if bool(torch.isfinite(row[:draws]).all()) else "masked"
            problem = ValueError(f"the {which} model's loss is not finite in batch "
                                 f"{batch_ids[first_bad]} "
                                 f"(masked loss sums {row[:draws].tolist()}); xi would be NaN: "
                                 "check the model's weights and the inputs")
        else:
            problem = ValueError("the loss is not finite on another rank's data; xi would be NaN")
    index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    increase = torch.cat(increases).cpu() if increases else torch.zeros(0)
    return totals, index, increase, problem


def _readable_without_sync(labels: torch.Tensor) -> bool:
    """CPU labels can be checked at once; others are checked with tensor ops, then reduced."""
    return labels.device.type == "cpu"


def _logits(out, size: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != size:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return (batch, classes) logits, got {shape} for a "
                         f"batch of {size}")
    return out
