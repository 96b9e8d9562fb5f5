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

from .batches import (batch_indices, check_labels, checked_logits, label_error, unpack_batch,
                      valid_labels)
from .config import check_flag, check_integer, validate_keep_ratio, validate_threshold
from .distributed import all_reduce_sum, is_distributed, is_main_process
from .masks import (attach_score_masks, has_score_masks, iter_score_masks, masks_disabled,
                    random_scores, remove_score_masks)

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


def _check_arguments(draws, top_n, seed, progress, report, threshold) -> None:
    check_integer("draws", draws, 1)
    check_integer("top_n", top_n, 0)
    check_integer("seed", seed)
    check_flag("progress", progress)
    check_flag("report", report)
    validate_threshold(threshold)


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
    _check_arguments(draws, top_n, seed, progress, report, threshold)
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
        masks = _Draws(model, draws, generator)
        data = _Pass(model, masks, _Columns(draws, report), device).run(loader, progress)
        totals = _Totals(data, device)
        _refuse_bad_data(data, totals, loader)
    finally:
        if has_score_masks(model):
            remove_score_masks(model)
        for module, flag in modes:
            module.training = flag
    return _estimate(data, totals, keep_ratio, top_n)


class _Draws:
    """The random masks to average over: draw 0 is the attached one; with more draws, each
    draw's scores and masks are kept and copied in before its forward."""

    def __init__(self, model: nn.Module, draws: int, generator):
        self.masks = [m for _, _, m in iter_score_masks(model)]
        self.count = draws
        self.states = []
        if draws == 1:
            return
        group = self.masks[0].group
        for d in range(draws):
            if d:
                for m in self.masks:
                    m.scores.copy_(random_scores(m.scores, generator))
            group.refresh()
            self.states.append([(m.scores.detach().clone(), m.mask.clone()) for m in self.masks])

    def use(self, d: int) -> None:
        """Make draw ``d`` the model's mask (nothing to do for a single draw)."""
        if not self.states:
            return
        for m, (scores, mask) in zip(self.masks, self.states[d]):
            m.scores.copy_(scores)
            m.mask.copy_(mask)
        self.masks[0].group.mark_fresh()


class _Columns:
    """Where each per-batch sum sits in a row of the pass's table: the masked loss and the
    correct count of every draw, the count of bad labels, and with ``report`` the unmasked
    loss and correct count. The reduced vector appends the sample count and a flag."""

    def __init__(self, draws: int, report: bool):
        self.report = report
        self.loss = slice(0, draws)
        self.correct = slice(draws, 2 * draws)
        self.bad_labels = 2 * draws
        self.base = slice(2 * draws + 1, 2 * draws + 3)
        self.width = 2 * draws + 1 + (2 if report else 0)
        self.samples, self.not_finite = self.width, self.width + 1  # in the reduced vector


class _Pass:
    """The pass over the data: one row of sums per non-empty batch, kept on the device."""

    def __init__(self, model: nn.Module, draws: _Draws, columns: _Columns, device):
        self.model, self.draws, self.columns, self.device = model, draws, columns, device
        self.strict = not is_distributed()  # alone, a bad CPU label can stop the pass at once
        self.acc = torch.float32 if device.type == "mps" else torch.float64  # MPS: no float64
        self.rows, self.batch_ids, self.indices, self.increases = [], [], [], []
        self.host_bad = None  # the error for the first bad CPU labels, raised after the pass
        self.samples = 0
        self.classes = None

    def run(self, loader, progress: bool) -> "_Pass":
        show_xi = progress and self.device.type == "cpu"  # a live value would sync others
        try:
            length = len(loader)
        except TypeError:
            length = None
        # The bar never wraps the loader: tqdm.auto's constructor calls iter() on what it
        # wraps, which would start the workers and draw from a seeded DataLoader once more.
        bar = tqdm(total=length, desc="estimating xi",
                   disable=not (progress and is_main_process()), leave=False)
        running = 0.0
        for i, batch in enumerate(loader):
            bar.update(1)
            row = self._batch(i, batch)
            if row is not None and show_xi:
                running += float(row[self.columns.loss].sum())
                bar.set_postfix(xi=f"{running / (self.draws.count * self.samples):.4g}")
        bar.close()
        return self

    def _batch(self, i: int, batch):
        """Add batch ``i``'s row (None for an empty batch)."""
        x, y = unpack_batch(batch)
        size = y.shape[0]
        if size == 0:
            return None
        x = x.to(self.device, non_blocking=True)
        base_logits = None
        if self.columns.report:
            with masks_disabled(self.model):
                base_logits = checked_logits(self.model(x), size, self.model)
        loss_sums, correct, total = [], [], None
        for d in range(self.draws.count):
            self.draws.use(d)
            logits = checked_logits(self.model(x), size, self.model)
            if d == 0:
                y_safe, valid = self._labels(i, y, logits.shape[1])
            masked = F.cross_entropy(logits, y_safe, reduction="none")
            loss_sums.append(masked.to(self.acc).sum())
            correct.append((logits.argmax(1) == y_safe).sum().to(self.acc))
            total = masked if total is None else total + masked
        row = loss_sums + correct + [(~valid).sum().to(self.acc)]
        if base_logits is not None:
            base = F.cross_entropy(base_logits, y_safe, reduction="none")
            row += [base.to(self.acc).sum(), (base_logits.argmax(1) == y_safe).sum().to(self.acc)]
            self.indices.append(batch_indices(batch, self.samples, size))
            self.increases.append(total / self.draws.count - base)
        self.rows.append(torch.stack(row))
        self.batch_ids.append(i)
        self.samples += size
        return self.rows[-1]

    def _labels(self, i: int, y: torch.Tensor, classes: int):
        """The labels on the device with bad ones replaced by 0, and which were valid. Bad
        CPU labels are seen at once (and stop a lone process); others are counted."""
        self.classes = classes
        if _readable_without_sync(y):
            try:
                check_labels(y, classes, f" of batch {i}")
            except ValueError as err:
                if self.strict:
                    raise
                self.host_bad = self.host_bad or err
        y = y.to(self.device, non_blocking=True)
        valid = valid_labels(y, classes)
        return torch.where(valid, y, torch.zeros_like(y)), valid

    def table(self) -> torch.Tensor:
        """The rows as one float64 host tensor (batches x columns)."""
        if not self.rows:
            return torch.zeros(0, self.columns.width, dtype=torch.float64)
        return torch.stack(self.rows).cpu().double()


class _Totals:
    """The pass's sums over every rank, by name, and which local rows are not finite."""

    def __init__(self, data: "_Pass", device):
        columns = data.columns
        self.table, self.columns = data.table(), columns
        self.not_finite = (~torch.isfinite(self.table).all(1)).nonzero().view(-1)  # local rows
        local = torch.cat([self.table.sum(0),
                           torch.tensor([float(data.samples), float(self.not_finite.numel() > 0)],
                                        dtype=torch.float64)])
        summed = all_reduce_sum(local.to(device)).cpu()
        self.loss = summed[columns.loss].tolist()
        self.correct = summed[columns.correct].tolist()
        self.bad_labels = summed[columns.bad_labels]
        self.base = summed[columns.base].tolist() if columns.report else None
        self.count = float(summed[columns.samples])
        self.not_finite_anywhere = summed[columns.not_finite] > 0


def _refuse_bad_data(data: _Pass, totals: _Totals, loader) -> None:
    """Raise, alike on every rank, for no samples, bad labels or a non-finite loss."""
    columns = totals.columns
    if totals.count == 0:
        raise ValueError(f"the loader ({type(loader).__name__}) yielded no samples (no "
                         "batches, or only empty ones); xi needs the ID training data")
    if totals.bad_labels > 0:
        if data.host_bad is not None:
            raise data.host_bad
        bad_rows = (totals.table[:, columns.bad_labels] > 0).nonzero().view(-1)
        where = (f"batch {data.batch_ids[int(bad_rows[0])]}" if bad_rows.numel()
                 else "another rank's data")
        raise label_error(data.classes if data.samples else None,
                          f"{int(totals.bad_labels)} outside them", f" (first in {where})")
    if totals.not_finite_anywhere:
        if not totals.not_finite.numel():
            raise ValueError("the loss is not finite on another rank's data; xi would be NaN")
        first = int(totals.not_finite[0])
        row = totals.table[first]
        which = "unmasked" if bool(torch.isfinite(row[columns.loss]).all()) else "masked"
        raise ValueError(f"the {which} model's loss is not finite in batch "
                         f"{data.batch_ids[first]} (masked loss sums "
                         f"{row[columns.loss].tolist()}); xi would be NaN: check the model's "
                         "weights and the inputs")


def _estimate(data: _Pass, totals: _Totals, keep_ratio: float, top_n: int) -> XiEstimate:
    """The estimate from the reduced sums (and, with ``report``, the local per-sample rows)."""
    draws, count = data.draws.count, totals.count
    xi_draws = [v / count for v in totals.loss]
    estimate = XiEstimate(xi=sum(xi_draws) / draws, xi_draws=xi_draws, keep_ratio=keep_ratio,
                          num_samples=int(count),
                          masked_accuracy=sum(totals.correct) / (draws * count))
    if totals.base is not None:
        estimate.base_loss, estimate.base_accuracy = (v / count for v in totals.base)
        index = torch.cat(data.indices) if data.indices else torch.zeros(0, dtype=torch.long)
        increase = torch.cat(data.increases).cpu() if data.increases else torch.zeros(0)
        estimate.sample_index, estimate.per_sample_increase = index, increase
        top = torch.topk(increase, min(top_n, increase.numel())).indices
        estimate.atypical = index[top]
    return estimate


def _readable_without_sync(labels: torch.Tensor) -> bool:
    """CPU labels can be checked at once; others are checked with tensor ops, then reduced."""
    return labels.device.type == "cpu"
