"""The embedded offline benchmark (MNIST-5k vs five OOD sets), split along its seams.

``config`` (what a run does) -> ``datasets`` (images from PyPI packages) -> ``training`` (LeNet
on the core engine) -> ``protocol`` (per seed: train, fine-tune, choose ξ) -> ``scoring``
(plug-in scorers or OpenOOD's Evaluator) -> ``report`` / ``plots``; ``records`` holds the typed
results they pass along. Run it with ``python -m benchmarks.embedded --out results/``.
"""
from .cli import main
from .config import BenchConfig

__all__ = ["BenchConfig", "main"]
