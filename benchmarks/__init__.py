"""Runnable experiments over um_plugin, run from the checkout (never installed).

``python -m benchmarks.embedded`` (offline OOD benchmark), ``python -m benchmarks.cost``
(compute cost), ``python -m benchmarks.repro`` (paper reproduction through OpenOOD).
They import ``um_plugin``; ``um_plugin`` never imports them.
"""
