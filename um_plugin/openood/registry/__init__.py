"""How our names reach OpenOOD: its lookups wrapped (trainers, recorders, postprocessors,
networks, the Evaluator's dataset dicts), offline benchmarks registered, YAMLs found.

Imports nothing at package level: ``um_plugin.openood`` imports and runs :func:`register.register`.
"""
