"""Save and resume a UM/UMAP run (mask scores included) at epoch boundaries."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .finetune import FinetuneConfig, Finetuner


def save_checkpoint(tuner: Finetuner, path) -> Path:
    """Write the run's state atomically, so an interrupted save never loses the last one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(tuner.state_dict(), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(model: nn.Module, path) -> Finetuner:
    """Rebuild the run saved at ``path`` around a fresh ``model`` of the same architecture."""
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"{path} is not a um-plugin fine-tuning checkpoint")
    tuner = Finetuner(model, state["xi"], FinetuneConfig(**state["config"]),
                      steps_per_epoch=state["steps_per_epoch"])
    try:
        tuner.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: {err}") from None
    return tuner
