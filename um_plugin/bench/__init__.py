"""Runnable benchmarks: the embedded offline benchmark, compute cost, paper reproduction.

Console entry points: ``um_plugin.bench.embedded:main`` (``um-bench``),
``um_plugin.bench.cost:main`` (``um-bench-cost``), ``um_plugin.bench.repro:main``
(``um-repro``). Modules import torch and the data packages lazily where they can.
"""
