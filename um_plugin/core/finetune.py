"""UM and UMAP fine-tuning loops over any classifier and any ``(x, y)`` / OpenOOD loader.

UM trains the weights under the loss constraint; UMAP freezes them, learns a top-k popup
mask under the same constraint and bakes it in at the end. Defaults follow the official
configs (SGD, momentum 0.9, weight decay 1e-4, cosine schedule, lr 0.1, 100 epochs, UMAP keep
ratio 0.8); every value is overridable.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from numbers import Real

import torch
from torch import nn
from tqdm.auto import tqdm

from .batches import unpack_batch
from .distributed import is_main_process
from .masks import (THRESHOLDS, attach_score_masks, bake_masks, freeze_weights,
                    has_score_masks, restore_requires_grad, validate_keep_ratio)
from .objective import LossConstraint, validate_xi

MODES = ("um", "umap")


class NonFiniteLossError(FloatingPointError):
    """Fine-tuning met a NaN/inf loss; the model is left as after the last good step."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss became {value} at epoch {epoch}, step {step}; the model was "
                         "left as after the last finite step (lower lr or check the data)")
        self.epoch, self.step, self.value = epoch, step, value


@dataclass
class FinetuneConfig:
    """Everything a UM/UMAP run needs to know; plain data, validated on creation."""

    mode: str = "um"
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    keep_ratio: float = 0.8
    threshold: str = "layer"
    freeze_weights: bool = True  # UMAP: learn the mask only (official CIFAR-10); False trains both
    beta: float = 1.0
    min_lr: float = 0.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        for name in ("lr", "momentum", "weight_decay", "min_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {self.threshold!r}")
        self.keep_ratio = validate_keep_ratio(self.keep_ratio)
        if not isinstance(self.freeze_weights, bool):
            raise ValueError(f"freeze_weights must be True or False, got {self.freeze_weights!r}")
        LossConstraint(0.0, self.beta)  # validates beta


@dataclass
class History:
    """Per-epoch mean loss, accuracy, ξ and final lr of a fine-tuning run."""

    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    xi: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def append(self, epoch: int, loss: float, acc: float, xi: float, lr: float) -> None:
        for name, value in zip(("epoch", "loss", "acc", "xi", "lr"), (epoch, loss, acc, xi, lr)):
            getattr(self, name).append(value)


def cosine_factor(step: int, total: int, floor: float) -> float:
    """Cosine decay from 1 to ``floor`` over ``total`` steps (OpenOOD's schedule shape)."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


class Finetuner:
    """One UM or UMAP run: model, optimizer, schedule and history, resumable at epoch ends."""

    def __init__(self, model: nn.Module, xi: float, config: FinetuneConfig | None = None,
                 steps_per_epoch: int = 1):
        self.config = config = config or FinetuneConfig()
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        self.model = model
        self.criterion = LossConstraint(validate_xi(xi), config.beta)
        self.steps_per_epoch = steps_per_epoch
        self._frozen = []
        if config.mode == "umap":
            if not has_score_masks(model):
                attach_score_masks(model, config.keep_ratio, threshold=config.threshold,
                                   generator=torch.Generator().manual_seed(config.seed))
            if config.freeze_weights:
                self._frozen = freeze_weights(model)
        elif has_score_masks(model):
            raise RuntimeError("UM trains weights of an unmasked model; this model has score "
                               "masks (bake_masks() it first, or use mode='umap')")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(model).__name__} has no trainable parameters for {config.mode}")
        self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay,
                                         nesterov=config.nesterov)
        total = config.epochs * steps_per_epoch
        floor = config.min_lr / config.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_factor(step, total, floor))
        self.epoch = 0
        self.history = History()
        self._buffers = [b for b in model.buffers()]
        self._backup = [b.detach().clone() for b in self._buffers]

    @property
    def xi(self) -> float:
        return self.criterion.xi

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def step(self, x: torch.Tensor, y: torch.Tensor, *, epoch: int = 0, index: int = 0):
        """One optimisation step; returns ``(loss, correct)`` as Python numbers."""
        device = self.device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self._backup:
            torch._foreach_copy_(self._backup, self._buffers)
        logits = self.model(x)
        if index == 0 and (y.min() < 0 or y.max() >= logits.shape[1]):
            raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}] for a model with "
                             f"{logits.shape[1]} outputs, got range [{int(y.min())}, {int(y.max())}]")
        loss = self.criterion(logits, y)
        value = loss.item()
        if not math.isfinite(value):
            if self._backup:
                torch._foreach_copy_(self._buffers, self._backup)  # undo BN stat updates
            raise NonFiniteLossError(epoch, index, value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        correct = (logits.detach().argmax(1) == y).sum().item()
        return value, correct

    def train_epoch(self, loader, epoch: int | None = None) -> dict:
        """Train one epoch; returns the sample-weighted mean loss and accuracy."""
        epoch = self.epoch if epoch is None else epoch
        self.model.train()
        total_loss, total_correct, count = 0.0, 0, 0
        bar = tqdm(loader, desc=f"{self.config.mode} epoch {epoch + 1}/{self.config.epochs}",
                   disable=not (self.config.progress and is_main_process()), leave=False)
        for index, batch in enumerate(bar):
            x, y = unpack_batch(batch)
            loss, correct = self.step(x, y, epoch=epoch, index=index)
            n = y.shape[0]
            total_loss += loss * n
            total_correct += correct
            count += n
            bar.set_postfix(loss=f"{total_loss / count:.4f}", acc=f"{total_correct / count:.3f}",
                            xi=f"{self.xi:.4f}")
        if count == 0:
            raise ValueError("the loader yielded no batches; fine-tuning needs ID training data")
        stats = {"loss": total_loss / count, "acc": total_correct / count}
        self.history.append(epoch, stats["loss"], stats["acc"], self.xi,
                            self.optimizer.param_groups[0]["lr"])
        self.epoch = epoch + 1
        return stats

    def fit(self, loader, checkpoint_path=None) -> History:
        """Train from the current epoch to ``config.epochs``, checkpointing each epoch."""
        from .checkpoint import save_checkpoint
        while self.epoch < self.config.epochs:
            self.train_epoch(loader)
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
            "epoch": self.epoch,
            "xi": self.xi,
            "config": asdict(self.config),
            "steps_per_epoch": self.steps_per_epoch,
            "history": asdict(self.history),
            "rng_cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.criterion.xi = state["xi"]
        self.history = History(**state["history"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])


def _run(mode: str, model: nn.Module, loader, xi: float, config: FinetuneConfig | None,
         checkpoint_path=None) -> History:
    from dataclasses import replace
    config = replace(config or FinetuneConfig(), mode=mode)
    tuner = Finetuner(model, xi, config, steps_per_epoch=len(loader))
    history = tuner.fit(loader, checkpoint_path=checkpoint_path)
    tuner.finish()
    return history


def run_um(model: nn.Module, loader, xi: float, config: FinetuneConfig | None = None,
           checkpoint_path=None) -> History:
    """Fine-tune the weights of ``model`` in place under the loss constraint ``xi``."""
    return _run("um", model, loader, xi, config, checkpoint_path)


def run_umap(model: nn.Module, loader, xi: float, config: FinetuneConfig | None = None,
             checkpoint_path=None) -> History:
    """Learn a top-k mask over the frozen weights of ``model`` under ``xi``, then bake it."""
    return _run("umap", model, loader, xi, config, checkpoint_path)
