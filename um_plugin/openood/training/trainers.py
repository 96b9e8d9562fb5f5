"""OpenOOD trainers ``um``, ``umap``, ``um_oe`` and ``umap_oe``: the core engine on OpenOOD's
trainer contracts.

``get_trainer(net, train_loader, val_loader, config)`` builds them, ``train_epoch(epoch_idx)``
returns ``(net, metrics)``, so ``main.py`` with ``configs/pipelines/train/train_um[ap].yml``
trains them. The loop is the core's ``Finetuner`` (no loop here); what differs per route is
passed in: the settings from ``trainer.trainer_args`` and OpenOOD's ``optimizer:`` section,
the gradient all-reduce (OpenOOD wraps the net in DDP before the trainer exists, so DDP does
not know UMAP's mask scores), a buffer broadcast after each epoch, and the images ξ and
fine-tuning use (``preprocessing``: OpenOOD's training loader as it is, or the same images at
test-time preprocessing). Before any step the model must fit those images (``fit_check.py``).
``train_epoch`` returns a plain network, so ``best.ckpt`` loads into a fresh one; OpenOOD's
recorder makes ``best.ckpt`` the final epoch's model for these trainers (``recorder.py``).
``um_oe`` / ``umap_oe`` follow OpenOOD's ``oe`` trainer (pipeline ``train_oe`` hands it
``[train_loader, oe_loader]``; ``trainer.lambda_oe``): the engine forwards each ID batch with an
outlier batch, cycling the OE loader, and adds the outlier loss (the authors' ``main_OE.py``).
"""
from __future__ import annotations

from torch import nn

from um_plugin.core import Finetuner

from um_plugin.openood.training.export import PlainCopy
from um_plugin.openood.settings.fit_check import FitCheckError, mark_stopped, prepare_xi
from um_plugin.openood.settings.loaders import like, test_time_dataset
from um_plugin.openood.settings.options import TRAINER_NAMES, trainer_options
from um_plugin.openood.settings.presets import log_differences
from um_plugin.openood.settings.reuse import Mark, claim, new_token, refuse_reuse
from um_plugin.openood.training.sync import (average_gradients, broadcast_buffers, mean_over_ranks,
                                              unwrap, world_size)

_WHERE = "trainer.trainer_args"


class UnleashingTrainer:
    """UM or UMAP (``mode``) driving one core ``Finetuner`` over OpenOOD's training loader."""

    mode = None
    name = None  # the trainer's OpenOOD name

    def __init__(self, net: nn.Module, train_loader, config, val_loader=None,
                 oe_loader=None) -> None:
        self.options = trainer_options(config, self.name)  # every setting checked first
        if oe_loader is not None and len(oe_loader) == 0:
            raise ValueError("the OE loader is empty; the trainer needs auxiliary outliers "
                             "(dataset.oe.imglist_pth)")
        self.oe_loader = oe_loader
        if oe_loader is not None and val_loader is None:
            val_loader = _validation_loader(config)  # train_oe passes none; the fit check needs it
        self.net = net
        self.model = unwrap(net)  # we average gradients ourselves, see sync.py
        refuse_reuse(self.model, f"trainer {self.mode!r}")
        if len(train_loader) == 0:
            raise ValueError("the training loader is empty; the trainer needs ID training data")
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.config = config

        xi_loader = self.fit_loader = train_loader
        if self.options.data.preprocessing == "test":
            what = f"{_WHERE}.preprocessing: test"
            dataset = test_time_dataset(train_loader, config, what)
            xi_loader = like(train_loader, dataset, what, shuffle=False)
            self.fit_loader = like(train_loader, dataset, what, shuffle=True)
        log_differences(self.options, f"the {self.name} trainer", batch_size=train_loader.batch_size,
                        oe_batch_size=None if oe_loader is None else oe_loader.batch_size,
                        world_size=world_size())
        try:
            self.xi = prepare_xi(self.model, xi_loader, self.options.xi, self.options.data,
                                 where=_WHERE, reference=val_loader)
        except FitCheckError as exc:
            mark_stopped(config.get("output_dir"), str(exc))
            raise
        self.plain = PlainCopy(self.model) if self.mode == "umap" else None  # before masking
        self.tuner = Finetuner(self.model, self.xi, self.options.finetune,
                               steps_per_epoch=len(self.fit_loader), grad_hook=average_gradients)
        mark = Mark(self.mode, f"trainer {self.mode!r}", new_token())
        for fine_tuned in (self.model, self.output_net()):
            claim(fine_tuned, mark)

    @property
    def optimizer(self):
        return self.tuner.optimizer

    def output_net(self) -> nn.Module:
        """The network OpenOOD evaluates and saves: plain, masks folded in."""
        if self.plain is None:
            return self.net
        return self.plain.refresh(self.model)

    def train_epoch(self, epoch_idx: int):
        """One epoch of the core engine (OpenOOD counts epochs from 1, the core from 0)."""
        epochs = self.tuner.config.epochs
        if self.tuner.epoch >= epochs:
            raise RuntimeError(f"the {self.mode} trainer has run all {epochs} epochs "
                               "(optimizer.num_epochs); raise num_epochs to train longer")
        sampler = getattr(self.fit_loader, "sampler", None)
        if self.fit_loader is not self.train_loader and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch_idx - 1)  # as OpenOOD's pipeline does for its own loader
        oe_sampler = getattr(self.oe_loader, "sampler", None)
        if hasattr(oe_sampler, "set_epoch"):  # multi-GPU: a new outlier order every epoch
            oe_sampler.set_epoch(epoch_idx - 1)
        stats = self.tuner.train_epoch(self.fit_loader, epoch=epoch_idx - 1, outliers=self.oe_loader)
        broadcast_buffers(self.model)
        if self.tuner.epoch >= epochs:
            self.tuner.finish()  # UMAP: bake the mask into the weights of the original net
        metrics = {"epoch_idx": epoch_idx, "loss": mean_over_ranks(stats["loss"]),
                   "train_acc": mean_over_ranks(stats["acc"]), "xi": self.xi}
        return self.output_net(), metrics


class UMTrainer(UnleashingTrainer):
    """UM: fine-tune all weights under ``|CE - ξ| + ξ``."""

    mode = name = "um"


class UMAPTrainer(UnleashingTrainer):
    """UMAP: learn a popup mask (weights frozen by default) under ``|CE - ξ| + ξ``."""

    mode = name = "umap"


class UMOETrainer(UnleashingTrainer):
    """UM with outlier exposure: ``|CE - ξ| + ξ`` on ID data plus the outlier loss."""

    mode, name = "um", "um_oe"


class UMAPOETrainer(UnleashingTrainer):
    """UMAP with outlier exposure."""

    mode, name = "umap", "umap_oe"


TRAINERS = {cls.name: cls for cls in (UMTrainer, UMAPTrainer, UMOETrainer, UMAPOETrainer)}


def _validation_loader(config):
    """OpenOOD's ID validation loader of ``config``'s dataset, or None without a val split."""
    if "val" not in ((config.get("dataset") or {}).get("split_names") or []):
        return None
    from openood.datasets import get_dataloader
    return get_dataloader(config)["val"]


def _build(name: str, net, train_loader, val_loader, config):
    """Our trainer ``name``; pipeline ``train_oe`` passes ``[train_loader, oe_loader]``."""
    with_outliers = TRAINER_NAMES[name][1]
    pair = isinstance(train_loader, (list, tuple))
    if with_outliers and not pair:
        raise ValueError(f"trainer {name!r} trains on OpenOOD's OE loader: use pipeline.name: "
                         "train_oe and a dataset config with an 'oe' split (um-openood "
                         "dataset-config --oe IMGLIST)")
    if pair and not with_outliers:
        raise ValueError(f"trainer {name!r} takes one training loader, but pipeline "
                         f"train_oe gave {len(train_loader)}; use trainer {name}_oe for OE")
    oe_loader = None
    if pair:
        train_loader, oe_loader = train_loader
    return TRAINERS[name](net, train_loader, config, val_loader=val_loader, oe_loader=oe_loader)


def make_get_trainer(openood_get_trainer):
    """Wrap OpenOOD's ``get_trainer`` so ``trainer.name: um|umap|um_oe|umap_oe`` builds ours."""

    def get_trainer(net, train_loader, val_loader, config=None):
        if config is None:  # FinetunePipeline calls get_trainer(net, train_loader, config)
            config, val_loader = val_loader, None
        name = config.trainer.name if config.trainer is not None else None
        if name in TRAINERS:
            return _build(name, net, train_loader, val_loader, config)
        return openood_get_trainer(net, train_loader, val_loader, config)

    get_trainer.__doc__ = openood_get_trainer.__doc__
    return get_trainer
