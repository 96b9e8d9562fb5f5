"""Compute cost of UM / UMAP against plain training, as ratios measured in one run.

``python -m benchmarks.cost --device cuda --out results/cost`` is also the GPU script: it
measures every figure the README's cost table holds (well within 5 minutes on one GPU), counts
host-device synchronisations per training step, and writes ``cost.json`` / ``cost.md``.
"""
from .measure import MODELS, CostError
from .run import TARGETS, main, markdown, run

__all__ = ["MODELS", "TARGETS", "CostError", "main", "markdown", "run"]
