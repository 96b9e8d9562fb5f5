"""What a leaderboard row was made from: file hashes, settings, the benchmark, the versions.

A row is trusted only when it says which checkpoint bytes, which resolved postprocessor config
and which benchmark it is of; the score cache (``um_plugin.openood.evaluation.score_cache``) reuses a
result only when the same three match. Plain hashlib: the gate reads these without torch.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from typing import Dict, Iterable

# leaderboard columns that are provenance (text), not metrics
COLUMNS = ("checkpoint_sha256", "config_sha256", "settings", "benchmark", "versions")
_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    """The sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value) -> str:
    """A stable hash of a JSON-able value (keys sorted; other objects by their ``str``)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def data_identity(image_lists: Iterable[str], image_root_of: Dict[str, str],
                  extra=None) -> str:
    """A hash of the image lists' bytes and of every listed file's name and size.

    ``image_root_of[list_path]`` is the folder the list's names are relative to; ``extra``
    (e.g. the preprocessing sizes and the class count) is hashed along."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for list_path in image_lists:
        digest.update(os.path.basename(list_path).encode() + b"\0")
        with open(list_path, "rb") as f:
            text = f.read()
        digest.update(hashlib.sha256(text).digest())
        root = image_root_of[list_path]
        for line in text.decode(errors="replace").splitlines():
            name = line.strip().partition(" ")[0]
            if not name:
                continue
            path = os.path.join(root, name)
            size = os.path.getsize(path) if os.path.isfile(path) else -1
            digest.update(f"{name}\0{size}\n".encode())
    return digest.hexdigest()


def versions() -> str:
    """``um-plugin X; OpenOOD Y; torch Z`` from the installed distributions (none imported)."""
    parts = []
    for label, dist in (("um-plugin", "um-plugin"), ("OpenOOD", "openood"), ("torch", "torch")):
        try:
            parts.append(f"{label} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{label} absent")
    return "; ".join(parts)
