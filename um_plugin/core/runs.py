"""One-shot UM / UMAP runs over the engine, and resuming a run from its checkpoint.

``run_um`` / ``run_umap`` own a whole run: they resume an existing checkpoint of the same run,
and on any error or Ctrl-C give the model back exactly as it came in.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .checkpoint import check_writable, read_state
from .config import FinetuneConfig, validate_xi
from .distributed import average_gradients, broadcast_buffers, unwrap
from .finetune import Finetuner, GradHook, History
from .masks import has_score_masks, remove_score_masks


def load_checkpoint(model: nn.Module, path, *, grad_hook: Optional[GradHook] = None) -> Finetuner:
    """Rebuild the run saved at ``path`` around a fresh ``model`` of the same architecture.

    The file is verified first (see :mod:`um_plugin.core.checkpoint`): a damaged, truncated or
    zero-filled one, or one that is not a resumable run's, is refused in one line naming it.
    """
    state = read_state(path, map_location=next(model.parameters()).device)
    tuner = Finetuner(model, state["xi"], FinetuneConfig.from_saved(state["config"]),
                      steps_per_epoch=state.get("steps_per_epoch"), grad_hook=grad_hook)
    tuner.load_state_dict(state, source=f"checkpoint {str(path)!r}")
    return tuner


class _Snapshot:
    """The model as it came into ``run_um``/``run_umap``, to give it back on any failure."""

    def __init__(self, model: nn.Module):
        self.masked = has_score_masks(model)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.flags = [(p, p.requires_grad) for p in model.parameters()]
        self.modes = [(m, m.training) for m in model.modules()]

    def restore(self, model: nn.Module) -> None:
        if has_score_masks(model) and not self.masked:
            remove_score_masks(model)
        with torch.no_grad():
            model.load_state_dict(self.state)
        for p, flag in self.flags:
            p.requires_grad_(flag)
        for m, training in self.modes:
            m.training = training


def _run(mode: str, model: nn.Module, loader, xi: float, config: Optional[FinetuneConfig],
         checkpoint_path, grad_hook: Optional[GradHook], outliers) -> History:
    config = replace(FinetuneConfig() if config is None else config, mode=mode)
    xi = validate_xi(xi)
    wrapped = unwrap(model) is not model
    if wrapped:  # DDP: step the module inside, average gradients ourselves (see distributed.py)
        model, grad_hook = unwrap(model), grad_hook or average_gradients
    resume = None
    if checkpoint_path is not None:
        check_writable(checkpoint_path)
        if Path(checkpoint_path).exists():
            resume = read_state(checkpoint_path, map_location=next(model.parameters()).device)
    snapshot = _Snapshot(model)
    try:
        tuner = Finetuner(model, xi, config, grad_hook=grad_hook)
        if resume is not None:
            tuner.load_state_dict(resume, source=f"checkpoint {str(checkpoint_path)!r}")
        history = tuner.fit(loader, checkpoint_path=checkpoint_path, outliers=outliers)
        tuner.finish()
        if wrapped:
            broadcast_buffers(model)  # BatchNorm statistics: rank 0's, as DDP's forward does
    except BaseException:
        snapshot.restore(model)
        raise
    return history


def run_um(model: nn.Module, loader, xi: float, config: Optional[FinetuneConfig] = None,
           checkpoint_path=None, *, grad_hook: Optional[GradHook] = None,
           outliers=None) -> History:
    """Fine-tune the weights of ``model`` in place under the loss constraint ``xi``.

    With ``checkpoint_path``, each epoch is saved there and an existing checkpoint of the same
    run is resumed (one of another run is refused). On any error or Ctrl-C the model is given
    back exactly as it came in. With ``config.outlier_loss`` ('oe' / 'energy'), ``outliers``
    is the loader of auxiliary outliers (the authors' UM with outlier exposure). A
    DistributedDataParallel ``model`` (torchrun) trains the module inside it, gradients averaged
    over ranks; ``loader`` gives each rank its shard.
    """
    return _run("um", model, loader, xi, config, checkpoint_path, grad_hook, outliers)


def run_umap(model: nn.Module, loader, xi: float, config: Optional[FinetuneConfig] = None,
             checkpoint_path=None, *, grad_hook: Optional[GradHook] = None,
             outliers=None) -> History:
    """Learn a top-k mask over the frozen weights of ``model`` under ``xi``, then bake it.

    Checkpoints and failures behave as in :func:`run_um`: on any error or Ctrl-C the model
    comes back unmasked, with its weights, buffers and ``requires_grad`` flags as before.
    """
    return _run("umap", model, loader, xi, config, checkpoint_path, grad_hook, outliers)


RUNNERS = {"um": run_um, "umap": run_umap}  # a FinetuneConfig mode -> its one-shot run
