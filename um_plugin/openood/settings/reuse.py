"""One UM/UMAP run per network: a second method on an already fine-tuned network is refused.

OpenOOD's Evaluator fine-tunes the network it is given in place. Running ``umap_msp`` on a
network ``um_msp`` already changed would evaluate UM+UMAP, and skipping the run would print
UM's table under UMAP's name; both are silently wrong. So every route marks the network it
fine-tuned (an attribute, copied by ``copy.deepcopy``) and refuses a marked or masked one.
Only the postprocessor instance that made a mark may meet it again (APS re-runs ``setup``).
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Optional

from torch import nn

from um_plugin.core.masks import has_score_masks

MARK = "_um_plugin_applied"
_TOKENS = itertools.count()


class NetworkReuseError(RuntimeError):
    """The network already carries a UM/UMAP run (or score masks) of this process."""


@dataclass(frozen=True)
class Mark:
    """Who fine-tuned a network: the mode, a description and the owner's token."""

    mode: str
    by: str
    token: str


def new_token() -> str:
    """A token unique to one trainer / postprocessor (process id + counter; survives pickling)."""
    return f"{os.getpid()}-{next(_TOKENS)}"


def mark_of(net: nn.Module) -> Optional[Mark]:
    """The mark a route left on ``net``, or None."""
    return getattr(net, MARK, None)


def claim(net: nn.Module, mark: Mark) -> None:
    """Record that ``mark``'s owner fine-tuned ``net``."""
    setattr(net, MARK, mark)


def refuse_reuse(net: nn.Module, who: str) -> None:
    """Raise :class:`NetworkReuseError` (one line: what happened, what to do) unless ``net``
    is a plain network no route has fine-tuned yet."""
    mark = mark_of(net)
    if mark is not None:
        raise NetworkReuseError(
            f"{who}: this network was already fine-tuned by {mark.by} in this process; running "
            f"{mark.mode} and then this method would stack two methods, and skipping this one "
            f"would report {mark.by}'s result under this name. Give each method its own copy of "
            "the trained network, e.g. Evaluator(copy.deepcopy(net), ...), or reload the checkpoint")
    if has_score_masks(net):
        raise NetworkReuseError(
            f"{who}: this network carries score masks (an unfinished UMAP run or a manual "
            "attach_score_masks); pass the trained network without masks (bake_masks() or "
            "remove_score_masks() it, or reload the checkpoint)")
