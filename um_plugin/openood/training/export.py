"""A plain copy of a masked network, for what OpenOOD evaluates and checkpoints mid-training.

While UMAP trains, the network carries score-mask parametrizations, whose ``state_dict`` keys
(``parametrizations.weight.original``, scores) do not load into a fresh network, and which
cannot be deep-copied. OpenOOD's recorder saves whatever ``train_epoch`` returns after every
epoch, so the trainer returns a :class:`PlainCopy`: a copy taken before masking and refreshed
with the masked weights (mask folded in) each epoch.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def masked_state_dict(model: nn.Module, keys) -> dict:
    """``keys`` of a plain state_dict, read from ``model`` with each mask applied to its weight."""
    out = {}
    with torch.no_grad():
        for key in keys:
            path, _, attr = key.rpartition(".")
            owner = model.get_submodule(path) if path else model
            out[key] = getattr(owner, attr).detach().clone()
    return out


class PlainCopy:
    """Keeps an unmasked twin of a network in step with the masked original."""

    def __init__(self, model: nn.Module):
        self.net = copy.deepcopy(model)  # before masking: deepcopy of masked modules is refused
        self.keys = list(self.net.state_dict().keys())

    def refresh(self, masked: nn.Module) -> nn.Module:
        """Copy the masked model's effective weights and buffers into the twin; return it."""
        self.net.load_state_dict(masked_state_dict(masked, self.keys))
        self.net.train(masked.training)
        return self.net
