"""The models of the embedded benchmark: the LeNet, its base training, CE / UM / UMAP fine-tunes.

All of it runs on the core's one engine (``um_plugin.core.finetune.Finetuner``): base training
is UM at ξ = 0 (``|CE - 0| + 0`` is CE bit for bit, with the same gradient), CE fine-tuning
is the same at the fine-tuning settings.
"""
from __future__ import annotations

import copy
import os
from typing import List, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from um_plugin.core import FinetuneConfig, Finetuner
from um_plugin.core.distributed import strip_ddp_prefix
from um_plugin.core.runs import RUNNERS

from ..models import LeNet
from ..checks import BenchmarkError
from .config import BASE_OPTIM, FINETUNE_OPTIM, BenchConfig
from .records import EpochLog, FinetuneRecord


def make_model(seed: int) -> nn.Module:
    """OpenOOD's LeNet layout (3-channel 28x28), so OpenOOD is optional."""
    torch.manual_seed(seed)
    return LeNet(num_classes=10, num_channel=3)


def load_checkpoint_model(path: str) -> nn.Module:
    """A LeNet from a state_dict file; one clear error for any other architecture."""
    if not os.path.isfile(path):
        raise BenchmarkError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchmarkError(f"checkpoint {path!r} is not a torch state_dict file ({exc.__class__.__name__})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model = make_model(0)
    if not isinstance(state, dict):
        raise BenchmarkError(f"checkpoint {path!r} holds a {type(state).__name__}, not a state_dict")
    strip_ddp_prefix(state)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        want = model.state_dict()
        diff = sorted(set(state) ^ set(want))[:3] or [
            f"{k}: {tuple(state[k].shape)} vs {tuple(want[k].shape)}" for k in want
            if k in state and state[k].shape != want[k].shape][:3]
        raise BenchmarkError(f"checkpoint {path!r} is not a LeNet(num_classes=10, num_channel=3) "
                         f"state_dict (first differences: {diff})") from None
    return model


def make_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    """A shuffled loader whose order depends on ``seed`` only."""
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                       batch_size=batch_size, shuffle=True, generator=g)


def base_config(cfg: BenchConfig, seed: int) -> FinetuneConfig:
    """Base training as an engine configuration (mode 'um', used with ξ = 0)."""
    return FinetuneConfig(mode="um", epochs=cfg.epochs, lr=cfg.lr, keep_ratio=cfg.keep_ratio,
                          threshold=FINETUNE_OPTIM["threshold"], freeze_weights=True, seed=seed,
                          progress=False, **BASE_OPTIM)


def finetune_config(mode: str, cfg: BenchConfig, seed: int) -> FinetuneConfig:
    """The CE / UM / UMAP fine-tuning configuration, every field stated."""
    lr = cfg.umap_lr if mode == "umap" else cfg.um_lr
    return FinetuneConfig(mode="umap" if mode == "umap" else "um", epochs=cfg.ft_epochs, lr=lr,
                          keep_ratio=cfg.keep_ratio, seed=seed, progress=cfg.progress,
                          **FINETUNE_OPTIM)


def train_base(x, y, cfg: BenchConfig, seed: int, ckpt_dir: str,
               bar_desc: str) -> Tuple[nn.Module, List[EpochLog]]:
    """SGD + cosine to the final stage on the core engine; saves every epoch's state_dict."""
    model = make_model(seed)
    loader = make_loader(x, y, cfg.batch_size, seed)
    tuner = Finetuner(model, 0.0, base_config(cfg, seed), steps_per_epoch=len(loader))
    log = []
    os.makedirs(ckpt_dir, exist_ok=True)
    for epoch in tqdm(range(cfg.epochs), desc=bar_desc, disable=not cfg.progress, leave=False):
        stats = tuner.train_epoch(loader, epoch)
        log.append(EpochLog(epoch + 1, stats["loss"], stats["acc"]))
        torch.save(model.state_dict(), checkpoint_path(ckpt_dir, epoch + 1))
    return model, log


def checkpoint_path(ckpt_dir: str, epoch: int) -> str:
    return os.path.join(ckpt_dir, f"epoch{epoch:03d}.pt")


@torch.no_grad()
def train_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float(torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
                 .eq(y).float().mean())


def finetune(mode: str, base: nn.Module, loader, xi: float, cfg: BenchConfig,
             seed: int) -> Tuple[nn.Module, FinetuneRecord]:
    """One CE (UM at ξ 0) / UM / UMAP fine-tune of a copy of ``base``."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    config = finetune_config(mode, cfg, seed)
    if mode == "ce":  # run_um's steps at ξ 0, under a bar of its own (not 'um epoch')
        tuner = Finetuner(model, 0.0, config)
        while tuner.epoch < config.epochs:
            tuner.train_epoch(loader, desc=f"ce epoch {tuner.epoch + 1}/{config.epochs}")
        hist = tuner.history
    else:
        hist = RUNNERS[config.mode](model, loader, xi, config)
    return model, FinetuneRecord(list(hist.loss), list(hist.acc), xi)
