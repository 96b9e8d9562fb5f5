"""The one UM / UMAP fine-tuning engine; every caller (OpenOOD trainers and postprocessors,
benchmarks, users) drives it instead of writing a loop of its own.

UM trains the weights under the loss constraint; UMAP freezes them, learns a top-k popup mask
under the same constraint and bakes it in at the end. With ``config.outlier_loss`` the ID loss
gains a loss on a second stream, an outlier loader (``outliers=``) whose batches are forwarded
with the ID batch (core/outliers.py). What differs between callers is passed in: the loaders,
``grad_hook`` (e.g. a gradient all-reduce), the progress description.
:mod:`um_plugin.core.runs` wraps it in the one-shot ``run_um`` / ``run_umap``.

Per step the engine makes one host-device synchronisation, the one NaN safety needs (the loss
value and, under torch.distributed, a collective finiteness flag), so that a non-finite loss
stops every rank before any update of that step.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .batches import check_labels, checked_logits, label_rule, unpack_batch, valid_labels
from .checkpoint import (check_entries, check_model_fits, check_writable, loader_generators,
                         save_checkpoint)
from .config import FinetuneConfig, validate_xi
from .distributed import is_distributed, is_main_process, set_sampler_epoch
from .history import History
from .masks import (attach_score_masks, bake_masks, freeze_weights, has_score_masks,
                    mask_settings, restore_requires_grad)
from .objective import LossConstraint
from .outliers import OutlierStream, outlier_objective

GradHook = Callable[[list], None]


class NonFiniteLossError(FloatingPointError):
    """Fine-tuning met a NaN/inf loss; that step was not applied on any rank."""

    def __init__(self, epoch: int, step: int, value: float, ranks: int = 1,
                 fix: str = "lower the lr, use precision='fp32', or check the data"):
        where = f" on {ranks} rank(s)" if is_distributed() else ""
        super().__init__(
            f"loss became non-finite{where} at epoch {epoch}, step {step} (this rank's loss: "
            f"{value}); that step was not applied and BatchNorm statistics were rolled back "
            f"({fix})")
        self.epoch, self.step, self.value = epoch, step, value


def cosine_factor(step: int, total: int, floor: float) -> float:
    """Cosine decay from 1 to ``floor`` over ``total`` steps. With ``floor = 0`` it is the
    authors' ``0.5 * (1 + cos(pi * e / E))`` to the last bit."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _generators(loader, outliers) -> list:
    """The generators the data order of both streams depends on (ID first)."""
    return loader_generators(loader) + ([] if outliers is None else loader_generators(outliers))


class Finetuner:
    """One UM or UMAP run: model, optimizer, schedule and history, resumable at epoch ends.

    ``steps_per_epoch`` defaults to ``len()`` of the first loader trained on; every later
    loader must have as many batches (the cosine schedule was built for that length).
    """

    def __init__(self, model: nn.Module, xi: float, config: Optional[FinetuneConfig] = None,
                 steps_per_epoch: Optional[int] = None, *, grad_hook: Optional[GradHook] = None):
        config = FinetuneConfig() if config is None else config
        if not isinstance(config, FinetuneConfig):
            raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
        if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(
                steps_per_epoch, int) or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive integer or None, got "
                             f"{steps_per_epoch!r}")
        if grad_hook is not None and not callable(grad_hook):
            raise TypeError(f"grad_hook must be callable(params) or None, got {grad_hook!r}")
        if next(model.parameters(), None) is None:
            raise ValueError(f"{type(model).__name__} has no parameters to fine-tune")
        xi = validate_xi(xi)
        settings = mask_settings(model)
        if config.mode == "um" and settings is not None:
            raise RuntimeError("UM trains weights of an unmasked model; this model has score "
                               "masks (bake_masks() it first, or use mode='umap')")
        if config.mode == "umap" and settings not in (None, (config.keep_ratio, config.threshold)):
            raise ValueError(
                f"the model already carries score masks with keep_ratio={settings[0]}, "
                f"threshold={settings[1]!r}, but this run asks for keep_ratio="
                f"{config.keep_ratio}, threshold={config.threshold!r}; remove_score_masks(model) "
                "first, or run with the model's settings")
        if config.mode == "um" and not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"{type(model).__name__} has no trainable parameters for um")

        self.config, self.model, self.grad_hook = config, model, grad_hook
        self.criterion = LossConstraint(xi, config.beta)
        self.outlier_loss = outlier_objective(config)
        self._frozen = []
        if config.mode == "umap":
            if settings is None:
                attach_score_masks(model, config.keep_ratio, include=config.include,
                                   threshold=config.threshold,
                                   generator=torch.Generator().manual_seed(config.seed))
            if config.freeze_weights:
                self._frozen = freeze_weights(model)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self._params, lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay,
                                         nesterov=config.nesterov)
        self.steps_per_epoch = None
        self._total = None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        if steps_per_epoch is not None:
            self._set_steps(steps_per_epoch)
        self._scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        self.epoch = 0
        self.history = History()
        self._buffers = list(model.buffers())
        self._backup = [b.detach().clone() for b in self._buffers]
        self._loader_rng: list = []
        self._pending_loader_rng: Optional[list] = None

    @property
    def xi(self) -> float:
        return self.criterion.xi

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _lr_factor(self, step: int) -> float:
        """The lr at optimisation step ``step`` as a fraction of ``config.lr`` (the scheduler
        steps once per batch; with ``lr_schedule='epoch'`` the factor only moves at epoch ends,
        so every step of epoch ``e`` runs at the authors' ``cosine_lr(e)``)."""
        if not self._total:
            return 1.0
        floor = self.config.min_lr / self.config.lr
        if self.config.lr_schedule == "epoch":
            return cosine_factor(step // self.steps_per_epoch, self.config.epochs, floor)
        return cosine_factor(step, self._total, floor)

    def _set_steps(self, steps: int) -> None:
        self.steps_per_epoch = steps
        self._total = self.config.epochs * steps

    def _bind(self, loader) -> Optional[int]:
        """Check ``loader``'s length against the schedule (fixing it on first use)."""
        try:
            n = len(loader)
        except TypeError:
            n = None
        if n == 0:
            raise ValueError("the loader is empty (0 batches); fine-tuning needs ID training data")
        if self.steps_per_epoch is None:
            if n is None:
                raise ValueError(f"{type(loader).__name__} has no len(); pass steps_per_epoch="
                                 "<batches per epoch> to Finetuner so the schedule knows its length")
            self._set_steps(n)
        elif n is not None and n != self.steps_per_epoch:
            raise ValueError(
                f"the loader has {n} batches per epoch, but this run's lr schedule was built for "
                f"steps_per_epoch={self.steps_per_epoch} (another batch size or dataset?); "
                "use the same loader settings, or start a new run")
        return n

    def _autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _check_labels(self, y: torch.Tensor, num_classes: int, first: bool) -> None:
        """Refuse labels outside ``[0, C)``; -100 (``ignore_index``) would be skipped silently."""
        if y.numel() == 0:
            raise ValueError("a batch has no samples; drop empty batches from the loader")
        if y.device.type == "cpu" or first:  # CPU labels cost no device sync
            check_labels(y, num_classes)
        else:
            torch._assert_async(valid_labels(y, num_classes).all(),
                                f"labels {label_rule(num_classes)}")

    def _finite_value(self, loss: torch.Tensor, epoch: int, index: int) -> float:
        """The loss as a float, or stop every rank (buffers rolled back) if any is non-finite."""
        value = loss.detach().float()
        bad_ranks = 0
        if is_distributed():
            bad = (~torch.isfinite(value)).float().reshape(1)
            dist.all_reduce(bad, op=dist.ReduceOp.SUM)
            value, bad_ranks = torch.cat([value.reshape(1), bad]).tolist()
        else:
            value = value.item()
        if bad_ranks or not math.isfinite(value):
            if self._backup:
                torch._foreach_copy_(self._buffers, self._backup)  # undo BN stat updates
            largest = torch.finfo(loss.dtype).max if loss.dtype.is_floating_point else math.inf
            if 2 * self.xi > largest:  # e.g. a half-precision model: |CE - xi| + xi overflows
                raise NonFiniteLossError(
                    epoch, index, value, int(bad_ranks) or 1,
                    f"xi={self.xi:g} is too large for the {loss.dtype} loss, whose largest value "
                    f"is {largest:g}: 2*xi must stay below it; use a smaller xi")
            raise NonFiniteLossError(epoch, index, value, int(bad_ranks) or 1)
        return value

    def step(self, x: torch.Tensor, y: torch.Tensor, *, outliers: Optional[torch.Tensor] = None,
             epoch: int = 0, index: int = 0):
        """One optimisation step; returns ``(loss as float, number correct as a device tensor)``.
        ``outliers``: a batch of outlier inputs, forwarded in one batch after ``x``."""
        self._check_outliers(outliers)
        device = self.device
        labels, size = y, x.shape[0]
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if outliers is not None:
            x = torch.cat((x, outliers.to(device, non_blocking=True)), 0)
        if self._backup:
            torch._foreach_copy_(self._backup, self._buffers)
        with self._autocast():
            out = checked_logits(self.model(x), x.shape[0], self.model)
            logits = out if outliers is None else out[:size]
            self._check_labels(labels, logits.shape[1], first=index == 0)
            loss = self.criterion(logits, y)
            if outliers is not None:
                loss = loss + self.outlier_loss(logits, out[size:])
        value = self._finite_value(loss, epoch, index)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self._scaler is None else self._scaler.scale(loss)).backward()
        if self.grad_hook is not None:
            self.grad_hook(self._params)  # fp16: on the scaled gradients, before unscaling
        if self._scaler is None:
            self.optimizer.step()
        else:
            self._scaler.step(self.optimizer)  # unscales; skips the step on inf/NaN gradients
            self._scaler.update()
        self.scheduler.step()
        return value, (logits.detach().argmax(1) == y).sum()

    def _check_outliers(self, outliers) -> None:
        if (outliers is None) != (self.outlier_loss is None):
            raise ValueError(
                f"outlier_loss={self.config.outlier_loss!r} but outliers were "
                f"{'not ' if outliers is None else ''}given; pass outliers=<an outlier loader> "
                "with outlier_loss 'oe' or 'energy', and none with 'none'")

    def train_epoch(self, loader, epoch: Optional[int] = None, *, desc: Optional[str] = None,
                    outliers=None) -> dict:
        """Train one epoch; returns the sample-weighted mean loss (outlier term included) and
        the accuracy on the ID data.

        The loader is iterated exactly as ``for batch in loader`` would (the progress bar never
        wraps it), so its shuffle draws from the same RNG state as any plain loop; an outlier
        loader ``outliers`` is iterated beside it as ``zip`` would (core/outliers.py).
        """
        epoch = self.epoch if epoch is None else epoch
        self._check_outliers(outliers)
        n = self._bind(loader)
        self._apply_pending_loader_rng(loader, outliers)
        self.model.train()
        show = self.config.progress and is_main_process()
        bar = tqdm(total=n, disable=not show, leave=False,
                   desc=desc or f"{self.config.mode} epoch {epoch + 1}/{self.config.epochs}")
        total_loss, count = 0.0, 0
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        try:
            batches = iter(loader)
            stream = None if outliers is None else OutlierStream(outliers)
            for index, batch in enumerate(batches):
                if index == self.steps_per_epoch:  # before a step past the schedule's end runs
                    raise self._miscount(f"at least {index + 1}", epoch, n)
                x, y = unpack_batch(batch)
                value, batch_correct = self.step(x, y, epoch=epoch, index=index, outliers=(
                    None if stream is None else stream.next()))
                total_loss += value * y.shape[0]
                correct += batch_correct
                count += y.shape[0]
                bar.update(1)
                if show:
                    bar.set_postfix(loss=f"{total_loss / count:.4f}", xi=f"{self.xi:.4g}",
                                    refresh=False)
        finally:
            bar.close()
        if count == 0:
            raise ValueError("the loader yielded no batches; fine-tuning needs ID training data")
        if index + 1 < self.steps_per_epoch:  # ran short: the decay would never finish
            raise self._miscount(str(index + 1), epoch, n)
        stats = {"loss": total_loss / count, "acc": correct.item() / count}
        self.history.append(epoch, stats["loss"], stats["acc"], self.xi,
                            self.optimizer.param_groups[0]["lr"])
        self.epoch = epoch + 1
        self._loader_rng = [g.get_state() for g in _generators(loader, outliers)]
        return stats

    def _miscount(self, yielded: str, epoch: int, n: Optional[int]) -> ValueError:
        """The batches an epoch really yields differ from the schedule's steps_per_epoch."""
        said = "" if n is None else f" (its len() says {n})"
        return ValueError(
            f"the loader yielded {yielded} batches in epoch {epoch + 1}{said}, but this run's lr "
            f"schedule was built for steps_per_epoch={self.steps_per_epoch} (stopped before a "
            "wrong schedule runs on); pass steps_per_epoch=<the batches one epoch really yields>")

    def _apply_pending_loader_rng(self, loader, outliers) -> None:
        if self._pending_loader_rng is None:
            return
        generators = _generators(loader, outliers)
        if len(generators) != len(self._pending_loader_rng):
            raise ValueError(
                f"the checkpoint recorded {len(self._pending_loader_rng)} data-order generator(s) "
                f"but this loader has {len(generators)}; resume with a loader built the same way "
                "(e.g. DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(s)))")
        for g, state in zip(generators, self._pending_loader_rng):
            g.set_state(state)
        self._pending_loader_rng = None

    def fit(self, loader, checkpoint_path=None, *, outliers=None) -> History:
        """Train from the current epoch to ``config.epochs``, checkpointing each epoch."""
        if checkpoint_path is not None:
            check_writable(checkpoint_path)
        self._check_outliers(outliers)
        self._bind(loader)
        while self.epoch < self.config.epochs:
            set_sampler_epoch(loader, self.epoch)  # DistributedSampler: each epoch its own order
            self.train_epoch(loader, outliers=outliers)
            if checkpoint_path is not None:
                save_checkpoint(self, checkpoint_path)
        return self.history

    def finish(self) -> nn.Module:
        """End the run: for UMAP bake the mask into the weights and unfreeze them."""
        if self.config.mode == "umap" and has_score_masks(self.model):
            bake_masks(self.model)
            restore_requires_grad(self._frozen)
        return self.model

    def state_dict(self) -> dict:
        """Everything needed to resume bit-exactly at an epoch boundary."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self._scaler.state_dict() if self._scaler is not None else None,
            "epoch": self.epoch,
            "xi": self.xi,
            "config": asdict(self.config),
            "steps_per_epoch": self.steps_per_epoch,
            "history": asdict(self.history),
            "rng_cpu": torch.get_rng_state(),
            "loader_rng": list(self._loader_rng),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict, *, source: str = "the checkpoint") -> None:
        """Resume from :meth:`state_dict`; refuses a checkpoint of a differently set-up run.

        Everything is checked before anything changes, so a refused state leaves this run as it
        was; ``source`` names the state in errors (``load_checkpoint`` passes the file's path).
        """
        check_entries(state, source, "pass what state_dict() returned")
        try:
            theirs = FinetuneConfig.from_saved(state["config"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source} holds an invalid config ({err}); pass what state_dict() "
                             "returned") from None
        diffs = self.config.differences(theirs)
        if state["xi"] != self.xi:
            diffs.append(f"xi: {self.xi!r} vs {state['xi']!r}")
        steps = state["steps_per_epoch"]
        if None not in (steps, self.steps_per_epoch) and steps != self.steps_per_epoch:
            diffs.append(f"steps_per_epoch: {self.steps_per_epoch} vs {steps}")
        if diffs:
            raise ValueError(f"{source} belongs to another run ({'; '.join(diffs)}: this run "
                             "vs checkpoint); resume with the checkpoint's settings "
                             "(load_checkpoint does) or use another checkpoint path")
        check_model_fits(self.model, state["model"], source)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"{source} does not fit {type(self.model).__name__} ("
                             f"{' '.join(str(err).split())}); resume with the architecture and "
                             "settings it was saved from") from None
        if steps is not None:
            self._set_steps(steps)
        self.scheduler.load_state_dict(state["scheduler"])
        if self._scaler is not None and state["scaler"] is not None:
            self._scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.history = History(**state["history"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self._loader_rng = list(state["loader_rng"])
        self._pending_loader_rng = list(self._loader_rng) if self.epoch > 0 else None
