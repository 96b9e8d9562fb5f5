"""A benchmark as a YAML file whose keys are :func:`register_benchmark`'s arguments.

``um-openood eval --benchmark FILE`` registers it before scoring; ``um-openood dataset-config
... --benchmark-out FILE`` writes it. A relative ``data_root`` is relative to the file's folder,
so a benchmark and its file can move together (a CI checkout, say).
"""
from __future__ import annotations

import inspect
import os

import yaml

from um_plugin.openood.registry.datasets import register_benchmark


def _parameters():
    params = inspect.signature(register_benchmark).parameters
    keys = [k for k in params if k != "dataset_yaml"]
    required = [k for k, p in params.items() if p.default is inspect.Parameter.empty]
    return keys, required


def load_benchmark_file(path: str) -> dict:
    """The ``register_benchmark`` keyword arguments in ``path``; one-line ValueError otherwise."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ValueError(f"--benchmark {path!r} cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"--benchmark {path!r} is not valid YAML "
                         f"({' '.join(str(exc).split())})") from None
    keys, required = _parameters()
    if not isinstance(data, dict):
        raise ValueError(f"--benchmark {path!r} must be a mapping of register_benchmark's "
                         f"arguments {keys}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ValueError(f"--benchmark {path!r}: unknown key(s) {unknown}; valid keys are {keys}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"--benchmark {path!r}: missing key(s) {missing}")
    if not isinstance(data["data_root"], str):
        raise ValueError(f"--benchmark {path!r}: data_root must be a path, got {data['data_root']!r}")
    data["data_root"] = os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(path)), data["data_root"]))
    return data


def register_benchmark_file(path: str) -> dict:
    """Register the benchmark ``path`` describes; return its arguments (``data_root`` absolute)."""
    kwargs = load_benchmark_file(path)
    try:
        register_benchmark(**kwargs)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise ValueError(f"--benchmark {path!r}: {exc}") from None
    return kwargs


def write_benchmark_file(kwargs: dict, path: str) -> str:
    """Write ``register_benchmark`` arguments to ``path`` (data_root relative to its folder)."""
    keys, _ = _parameters()
    unknown = sorted(set(kwargs) - set(keys))
    if unknown:
        raise ValueError(f"not register_benchmark arguments: {unknown}; valid: {keys}")
    folder = os.path.dirname(os.path.abspath(path))
    data = dict(kwargs)
    data["data_root"] = os.path.relpath(os.path.abspath(kwargs["data_root"]), folder)
    for key in ("near_ood", "far_ood", "csid"):
        if data.get(key) is not None:
            data[key] = dict(data[key])
    if data.get("normalization") is not None:
        data["normalization"] = [list(map(float, v)) for v in data["normalization"]]
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        f.write("# register_benchmark() arguments for um-openood eval --benchmark "
                "(data_root relative to this file)\n")
        yaml.safe_dump(data, f, sort_keys=False)
    return path
