"""Compute cost of UM / UMAP against plain training, as ratios measured in one run.

``python -m benchmarks.cost --device cuda --out results/cost`` is also the GPU script: it
measures every figure the README's cost table holds (well within 5 minutes on one GPU), counts
host-device synchronisations per training step, and writes ``cost.json`` / ``cost.md``.
``--mask-only`` runs just the mask selection against the official sort (the one mask-timing
measurement). ``--profile`` breaks the UMAP step down by op against plain and states the floor
(:mod:`.profile`); ``python -m benchmarks.cost.versus --baseline REV`` times this checkout
against an earlier commit in the same interleaved rounds (:mod:`.versus`).
"""
from .measure import MODELS
from .run import TARGETS, main, markdown, run

__all__ = ["MODELS", "TARGETS", "main", "markdown", "run"]
