"""``eval --save-score``'s cache: a postprocessor or scores pickle in a run folder, used again
only when it was made from the same checkpoint bytes, postprocessor config and benchmark.

``<run>/<kind>/<name>.pkl`` is where ``scripts/eval_ood.py`` keeps them; beside it
``<name>.pkl.key.json`` records what it was made from and the pickle's own sha256, so a changed
checkpoint, YAML or image list, a truncated file, or a pickle of another tool is recomputed,
and the reason is returned for the log. Writes are atomic (temporary file, ``os.replace``), the
key removed first and written last, so a killed write never leaves a key over another pickle.
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Optional, Tuple

from um_plugin.leaderboard.provenance import sha256_file

KEY_SUFFIX = ".key.json"
_FIELDS = {"checkpoint_sha256": "checkpoint bytes", "config_sha256": "postprocessor config",
           "benchmark": "benchmark (image lists or data files)"}


def cache_path(run: str, kind: str, name: str) -> str:
    return os.path.join(run, kind, f"{name}.pkl")


def load(run: str, kind: str, name: str, key: dict) -> Tuple[Optional[object], Optional[str]]:
    """``(object, None)`` for a valid cache entry; ``(None, why not)`` for one that exists but
    is not used; ``(None, None)`` when there is none."""
    path = cache_path(run, kind, name)
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path + KEY_SUFFIX) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return None, (f"recomputing {path}: it has no readable {os.path.basename(path)}"
                      f"{KEY_SUFFIX}, so what it was made from is unknown")
    changed = [what for field, what in _FIELDS.items() if recorded.get(field) != key.get(field)]
    if changed:
        return None, f"recomputing {path}: made from other {', '.join(changed)}"
    if recorded.get("pickle_sha256") != sha256_file(path):
        return None, f"recomputing {path}: its bytes are not the ones written (truncated or changed)"
    try:
        with open(path, "rb") as f:
            return pickle.load(f), None
    except Exception as exc:  # noqa: BLE001  unpickling fails in many types
        return None, f"recomputing {path}: it cannot be unpickled ({type(exc).__name__})"


def _replace(path: str, write) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def store(run: str, kind: str, name: str, obj, key: dict) -> Optional[str]:
    """Write the entry atomically; return a one-line note when it could not be written (the
    scores are kept in memory either way)."""
    path = cache_path(run, kind, name)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path + KEY_SUFFIX):
            os.remove(path + KEY_SUFFIX)
        _replace(path, lambda f: pickle.dump(obj, f, pickle.HIGHEST_PROTOCOL))
        record = dict(key, pickle_sha256=sha256_file(path))
        _replace(path + KEY_SUFFIX, lambda f: f.write(json.dumps(record, indent=1).encode()))
    except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:
        return f"not cached {path}: {type(exc).__name__}: {exc}"
    return None
