"""Checkpoint files: checksummed, atomic, refused in one line when damaged or not a run's file.

Format (v2): one ASCII header line, then the ``torch.save`` bytes of the run's state::

    um-plugin checkpoint v2 sha256=<64 lowercase hex digits> bytes=<payload length>\\n<payload>

The header covers the payload (its length and sha256), and the header itself must match that
pattern byte for byte, so any changed, missing or zeroed byte anywhere in the file is refused
before torch reads it (torch's zip reader checks no CRC).

A save goes to ``.<name>.tmp`` beside the target and is renamed over it, so a killed save never
loses the previous checkpoint and leaves at most one stale temporary file, which the next save
replaces. Files are created with the process umask (not mkstemp's 0600).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import zipfile
from dataclasses import fields
from pathlib import Path

import torch

from .config import FinetuneConfig, validate_xi
from .paths import probe_write

_MAGIC = b"um-plugin checkpoint "
_HEADER = re.compile(rb"um-plugin checkpoint v2 sha256=([0-9a-f]{64}) bytes=(0|[1-9][0-9]{0,18})\n")
_HEADER_MAX = 128  # longer than any valid header line
# what Finetuner.state_dict writes and load_state_dict needs; "rng_cuda" is there on CUDA only
REQUIRED = ("model", "optimizer", "scheduler", "scaler", "epoch", "xi", "config",
            "steps_per_epoch", "history", "rng_cpu", "loader_rng")
_VALID = "a file written by save_checkpoint or run_um/run_umap(checkpoint_path=)"
_ELSEWHERE = "use an earlier checkpoint, or delete it to start the run afresh"


def _name(path: Path) -> str:
    return f"checkpoint {str(path)!r}"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def check_writable(path) -> Path:
    """Fail now, naming ``path``, if a checkpoint could not be written there later."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint path {str(path)!r} is a folder; pass a file path")
    try:
        probe_write(_tmp_path(path))
    except OSError as err:
        raise ValueError(f"checkpoint path {str(path)!r} is not writable ({err.strerror or err}); "
                         "pass a path in a writable folder") from None
    return path


def encode(state: dict) -> bytes:
    """``state`` as the bytes of a v2 checkpoint file (header line, then torch.save's bytes)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = (f"um-plugin checkpoint v2 sha256={hashlib.sha256(payload).hexdigest()} "
              f"bytes={len(payload)}\n").encode("ascii")
    return header + payload


def write_state(state: dict, path) -> Path:
    """Write ``state`` to ``path`` as a v2 checkpoint, atomically (temp file, fsync, rename)."""
    path = Path(path)
    data = encode(state)  # serialised first: a failure here leaves no file behind
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _payload(data: bytes, path: Path) -> memoryview:
    """The verified payload of a v2 file."""
    where = _name(path)
    if not data:
        raise ValueError(f"{where} cannot be read: it is empty (0 bytes); {_ELSEWHERE}")
    if data.count(0) == len(data):
        raise ValueError(f"{where} cannot be read: all its {len(data)} bytes are zero (the disk "
                         f"never got what was written?); {_ELSEWHERE}")
    newline = data.find(b"\n", 0, _HEADER_MAX)
    header = _HEADER.fullmatch(data[:newline + 1]) if newline >= 0 else None
    if header is None:
        first = data[:_HEADER_MAX]
        if _MAGIC in first or b" sha256=" in first or _MAGIC.startswith(data[:len(_MAGIC)]):
            raise ValueError(f"{where} cannot be read: its header line is damaged or truncated "
                             f"(expected 'um-plugin checkpoint v2 sha256=<hex> bytes=<n>'); "
                             f"{_ELSEWHERE}")
        raise ValueError(f"{where} is not a um-plugin checkpoint (it starts with "
                         f"{data[:16]!r}); pass {_VALID}")
    payload, expected = memoryview(data)[newline + 1:], int(header.group(2))
    if len(payload) < expected:
        raise ValueError(f"{where} cannot be read: it is truncated ({len(payload)} of the "
                         f"{expected} bytes its header records); {_ELSEWHERE}")
    if len(payload) > expected:
        raise ValueError(f"{where} cannot be read: it holds {len(payload)} bytes after its header, "
                         f"which records {expected} (damaged or appended to); {_ELSEWHERE}")
    if hashlib.sha256(payload).hexdigest().encode("ascii") != header.group(1):
        raise ValueError(f"{where} cannot be read: its content does not match the sha256 checksum "
                         f"in its header (damaged on disk or in transfer); {_ELSEWHERE}")
    return payload


def check_entries(state: dict, where: str, fix: str) -> None:
    """Refuse a state that lacks any :data:`REQUIRED` entry, naming them, ``where`` and ``fix``."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"{where} lacks the {', '.join(map(repr, missing))} "
                         f"entr{'y' if len(missing) == 1 else 'ies'} of a fine-tuning run's state "
                         f"(one holds {', '.join(REQUIRED)}); {fix}")


def check_state(state, path: Path) -> dict:
    """Refuse, naming ``path``, a state that is not a resumable run's (entries, config, ξ)."""
    where = _name(path)
    if not isinstance(state, dict):
        raise ValueError(f"{where} holds a {type(state).__name__}, not a fine-tuning run's state; "
                         f"pass {_VALID}")
    check_entries(state, where, f"pass {_VALID}")
    config = state["config"]
    if not isinstance(config, dict):
        raise ValueError(f"{where} has a config of type {type(config).__name__}, not a dict of "
                         f"FinetuneConfig fields; pass {_VALID}")
    known = [f.name for f in fields(FinetuneConfig)]
    unknown = [k for k in config if k not in known]
    if unknown:
        raise ValueError(f"{where} has unknown config key(s) {', '.join(map(repr, unknown))} "
                         f"(written by another um-plugin version, or edited?); FinetuneConfig "
                         f"knows {', '.join(known)}")
    try:
        FinetuneConfig.from_saved(config)
        validate_xi(state["xi"])
    except ValueError as err:
        raise ValueError(f"{where} holds an invalid setting: {err}") from None
    if config.get("mode") == "umap" and isinstance(state["model"], dict) and not any(
            ".parametrizations." in k or k.startswith("parametrizations.") for k in state["model"]):
        raise ValueError(f"{where} is a finished UMAP run's file (saved after finish(): the mask "
                         "is baked into the weights), which cannot resume; its 'model' entry "
                         "loads into a plain model with model.load_state_dict, and a run resumes "
                         "from a checkpoint saved before finish()")
    return state


def read_state(path, map_location=None) -> dict:
    """Load a checkpoint's state, verified against its checksum, or raise one ValueError naming
    the file and the cause."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{_name(path)} is a folder, not a checkpoint file; pass {_VALID}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{_name(path)} cannot be read ({err.strerror or err}); pass a readable "
                         "file") from None
    payload = _payload(data, path)
    try:
        state = torch.load(io.BytesIO(payload),
                           map_location=map_location, weights_only=False)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError, KeyError) as err:
        raise ValueError(f"{_name(path)} cannot be read ({type(err).__name__}: "
                         f"{' '.join(str(err).split())}); it is truncated or not a torch file -- "
                         f"{_ELSEWHERE}") from None
    return check_state(state, path)


def save_checkpoint(tuner, path) -> Path:
    """Write a :class:`~um_plugin.core.finetune.Finetuner`'s state so it resumes bit-exactly."""
    return write_state(tuner.state_dict(), path)


def loader_generators(loader) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a loader's data order depends on (deduplicated).

    A ``DataLoader(shuffle=True, generator=g)`` draws its order and worker seeds from ``g``,
    not from the global RNG, so resuming bit-exactly needs ``g``'s state too.
    """
    found, seen = [], set()
    candidates = [getattr(loader, "generator", None),
                  getattr(getattr(loader, "sampler", None), "generator", None),
                  getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None),
                          "generator", None)]
    for g in candidates:
        if isinstance(g, torch.Generator) and id(g) not in seen:
            seen.add(id(g))
            found.append(g)
    return found


def check_model_fits(model, saved, source: str) -> None:
    """One line naming the first entry whose name or shape differs from this model's."""
    ours = model.state_dict()
    name = type(model).__name__
    if not isinstance(saved, dict):
        raise ValueError(f"{source} holds a {type(saved).__name__} as its model, not a "
                         "state_dict; pass what state_dict() returned")
    extra = [k for k in saved if k not in ours]
    lacking = [k for k in ours if k not in saved]
    if extra or lacking:
        parts = []
        if lacking:
            parts.append(f"{name} needs {len(lacking)} entries the file lacks (e.g. "
                         f"{lacking[0]!r})")
        if extra:
            parts.append(f"the file has {len(extra)} that {name} lacks (e.g. {extra[0]!r})")
        raise ValueError(f"{source} does not fit {name}: {'; '.join(parts)}; resume with the "
                         "architecture it was saved from")
    for k, value in saved.items():
        if isinstance(value, torch.Tensor) and value.shape != ours[k].shape:
            raise ValueError(f"{source} does not fit {name}: {k!r} has shape "
                             f"{tuple(value.shape)} in the file but {tuple(ours[k].shape)} in "
                             f"{name}; resume with the architecture it was saved from")
