"""OpenOOD trainers ``um`` and ``umap``: fine-tune a trained network under the loss constraint ξ.

They follow OpenOOD's trainer contract (``get_trainer(net, train_loader, val_loader, config)``,
``train_epoch(epoch_idx) -> (net, {'epoch_idx', 'loss'})``, dict batches, the ``optimizer:``
section with a per-step cosine schedule, tqdm on the main process only), so ``main.py`` with
``configs/pipelines/train/train_um[ap].yml`` trains them. ξ is ``trainer_args.loss_constraint``
or, when ``auto``, estimated on the training loader at construction (all-reduced across ranks).
``train_epoch`` always returns a plain network, so ``best.ckpt`` loads into a fresh one.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from tqdm import tqdm

import openood.utils.comm as comm
from openood.trainers.lr_scheduler import cosine_annealing

from um_plugin.core.batches import unpack_batch
from um_plugin.core.finetune import NonFiniteLossError
from um_plugin.core.masks import attach_score_masks, freeze_weights, score_parameters
from um_plugin.core.objective import LossConstraint
from um_plugin.core.xi import estimate_xi

from .export import PlainCopy
from .options import parse_options
from .sync import average_gradients, broadcast_buffers, mean_over_ranks, unwrap


def resolve_xi(model: nn.Module, loader, options, progress: bool) -> float:
    """ξ from the options, or estimated on ``loader`` when it is ``auto``; logged either way."""
    if options.xi is not None:
        xi = options.xi
        message = f"[um-plugin] loss constraint xi = {xi:.6g} (from config)"
    else:
        estimate = estimate_xi(model, loader, keep_ratio=options.xi_keep_ratio,
                               seed=options.xi_seed, draws=options.xi_draws, progress=progress)
        xi = estimate.xi
        summary = estimate.summary() if hasattr(estimate, "summary") else f"xi = {xi:.6g}"
        message = f"[um-plugin] loss constraint estimated: {summary}"
    if comm.is_main_process():
        print(message, flush=True)
    return xi


class UnleashingTrainer:
    """Shared loop of UM (all weights) and UMAP (mask scores only)."""

    mode = None

    def __init__(self, net: nn.Module, train_loader, config, val_loader=None) -> None:
        self.net = net
        self.model = unwrap(net)  # we average gradients ourselves, see sync.py
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.config = config
        self.options = parse_options(config.trainer.trainer_args, self.mode, "trainer.trainer_args")
        optimizer_cfg = config.optimizer
        for key in ("num_epochs", "lr", "momentum", "weight_decay"):
            if optimizer_cfg is None or optimizer_cfg.get(key) is None:
                raise ValueError(f"optimizer.{key} is missing; the {self.mode} trainer reads "
                                 "OpenOOD's optimizer: section (num_epochs, lr, momentum, weight_decay)")
        if len(train_loader) == 0:
            raise ValueError("the training loader is empty; the trainer needs ID training data")

        self.xi = resolve_xi(self.model, train_loader, self.options, comm.is_main_process())
        self.criterion = LossConstraint(self.xi, self.options.beta)
        self.plain = None
        if self.mode == "umap":
            self.plain = PlainCopy(self.model)
            generator = torch.Generator().manual_seed(self.options.seed)
            attach_score_masks(self.model, self.options.keep_ratio,
                               threshold=self.options.threshold, generator=generator)
            if self.options.freeze_weights:
                freeze_weights(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if self.mode == "umap" and self.options.freeze_weights:
            self.params = score_parameters(self.model)

        lr = float(optimizer_cfg.lr)
        self.optimizer = torch.optim.SGD(
            self.params, lr, momentum=float(optimizer_cfg.momentum),
            weight_decay=float(optimizer_cfg.weight_decay),
            nesterov=bool(optimizer_cfg.get("nesterov", True)))
        total_steps = int(optimizer_cfg.num_epochs) * len(train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_lambda=lambda step: cosine_annealing(step, total_steps, 1, 1e-6 / lr))

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def output_net(self) -> nn.Module:
        """The network OpenOOD evaluates and saves: plain, masks folded in."""
        if self.plain is None:
            return self.net
        return self.plain.refresh(self.model)

    def train_epoch(self, epoch_idx):
        self.model.train()
        device = self._device()
        loss_avg = 0.0
        bar = tqdm(self.train_loader, desc=f"Epoch {epoch_idx:03d} ({self.mode}): ",
                   position=0, leave=True, disable=not comm.is_main_process())
        for step, batch in enumerate(bar):
            x, y = unpack_batch(batch)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = self.criterion(self.model(x), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(epoch_idx, step, value)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(self.params)
            self.optimizer.step()
            self.scheduler.step()
            loss_avg = loss_avg * 0.8 + value * 0.2
        broadcast_buffers(self.model)
        metrics = {"epoch_idx": epoch_idx, "loss": mean_over_ranks(loss_avg), "xi": self.xi}
        return self.output_net(), metrics


class UMTrainer(UnleashingTrainer):
    """UM: fine-tune all weights under ``|CE - ξ| + ξ``."""

    mode = "um"


class UMAPTrainer(UnleashingTrainer):
    """UMAP: learn a popup mask (weights frozen by default) under ``|CE - ξ| + ξ``."""

    mode = "umap"


TRAINERS = {"um": UMTrainer, "umap": UMAPTrainer}


def make_get_trainer(openood_get_trainer):
    """Wrap OpenOOD's ``get_trainer`` so ``trainer.name: um|umap`` builds ours."""

    def get_trainer(net, train_loader, val_loader, config=None):
        if config is None:  # FinetunePipeline calls get_trainer(net, train_loader, config)
            config, val_loader = val_loader, None
        name = config.trainer.name if config.trainer is not None else None
        if name in TRAINERS:
            return TRAINERS[name](net, train_loader, config, val_loader=val_loader)
        return openood_get_trainer(net, train_loader, val_loader, config)

    get_trainer.__doc__ = openood_get_trainer.__doc__
    return get_trainer
