"""Which checkpoints make a leaderboard model, and whether they are the files they claim to be.

``main.py`` writes ``<exp>/s<seed>/best.ckpt``; the ``um`` / ``umap`` recorder also writes
``best.ckpt.sha256`` beside it (sha256sum's format), and a run the fit check stopped holds
:data:`STOP_MARKER` naming why instead of a checkpoint. Plain files and hashlib: the checks run
before torch or OpenOOD is imported.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import List, Optional

from .provenance import sha256_file

CHECKPOINT = "best.ckpt"  # what main.py's recorder saves and eval_ood.py reads
CHECKSUM_SUFFIX = ".sha256"
STOP_MARKER = "um-plugin-stopped.txt"


@dataclass
class Model:
    """One leaderboard model: a run folder's ``s*`` checkpoints, or one checkpoint file."""
    name: str
    root: str
    checkpoints: List[str]  # one per run (seed) folder, sorted
    csv_dir: str            # where --save-csv writes ood/<pp>.csv
    sha256: List[str] = field(default_factory=list)  # of each checkpoint's bytes
    skipped: List[str] = field(default_factory=list)  # one line per run folder left out


def checksum_line(sha256: str, path: str) -> str:
    return f"{sha256}  {os.path.basename(path)}\n"


def write_checksum(path: str, sha256: Optional[str] = None) -> str:
    """Write ``<path>.sha256`` (atomically) for the checkpoint at ``path``; return its hash."""
    sha256 = sha256 or sha256_file(path)
    target = path + CHECKSUM_SUFFIX
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(checksum_line(sha256, path))
    os.replace(tmp, target)
    return sha256


def verified_sha256(path: str) -> str:
    """The checkpoint's sha256, after checking it against ``<path>.sha256`` where that exists;
    a mismatch is a one-line ValueError (a damaged or replaced file)."""
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise ValueError(f"checkpoint {path!r} cannot be read ({exc.strerror})") from None
    sidecar = path + CHECKSUM_SUFFIX
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            recorded = (f.read().split() or [""])[0]
        if recorded != actual:
            raise ValueError(f"checkpoint {path!r} does not match its checksum file {sidecar!r} "
                             f"(sha256 {actual[:12]}..., recorded {recorded[:12]}...): the file "
                             "is damaged or was replaced; restore it, or delete the .sha256 file "
                             "if the new file is the one to score")
    return actual


def stop_reason(run_dir: str) -> Optional[str]:
    """Why the fit check stopped this run folder, or None."""
    path = os.path.join(run_dir, STOP_MARKER)
    if not os.path.isfile(path):
        return None
    with open(path, errors="replace") as f:
        return " ".join(f.read().split()) or "no reason recorded"


def model_from_root(root: str, checkpoint_name: str = CHECKPOINT) -> Model:
    """Every ``s*`` folder under ``root`` holding ``checkpoint_name`` (eval_ood.py's layout),
    folders the fit check stopped left out (one line each), or ``root`` itself when it is a
    checkpoint file; each checkpoint verified against its checksum file."""
    if os.path.isfile(root):
        path = os.path.abspath(root)
        stem = os.path.splitext(os.path.basename(path))[0]
        name = f"{os.path.basename(os.path.dirname(path))}/{stem}"
        return Model(name, path, [path], os.path.dirname(path), [verified_sha256(path)])
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--root {root!r} is neither a run folder nor a checkpoint file")
    top = os.path.abspath(root)
    runs = sorted(d for d in os.listdir(root)
                  if d.startswith("s") and os.path.isdir(os.path.join(root, d)))
    if not runs:
        raise ValueError(f"--root {root!r} has no s* run folders (main.py writes <exp>/s<seed>/); "
                         f"pass the folder above them, or a checkpoint file")
    skipped, kept = [], []
    for run in runs:
        reason = stop_reason(os.path.join(top, run))
        if reason is not None and not os.path.isfile(os.path.join(top, run, checkpoint_name)):
            skipped.append(f"--root {root!r}: {run}/ skipped, its run was stopped: {reason}")
        else:
            kept.append(run)
    missing = [d for d in kept if not os.path.isfile(os.path.join(root, d, checkpoint_name))]
    if missing:
        raise FileNotFoundError(f"--root {root!r}: run folder(s) {missing} have no "
                                f"{checkpoint_name!r} (--checkpoint-name)")
    if not kept:
        raise ValueError(f"--root {root!r}: every run folder was stopped ({skipped[0]}); "
                         "nothing to score")
    paths = [os.path.join(top, d, checkpoint_name) for d in kept]
    return Model(os.path.basename(os.path.normpath(top)), top, paths, top,
                 [verified_sha256(p) for p in paths], skipped)


_TRAINER_LINE = re.compile(r"\[um-plugin\] the (um|umap) trainer (?:differs from the authors' "
                           r"setting in: (.*)|runs the authors' setting)")


def trainer_settings(run_dir: str) -> str:
    """What a Route 1 run's ``um`` / ``umap`` trainer changed from the authors' setting, read
    from the line it printed into ``log.txt`` ('' for other runs)."""
    try:
        with open(os.path.join(run_dir, "log.txt"), errors="replace") as f:
            for line in f:
                found = _TRAINER_LINE.search(line)
                if found:
                    changed = found.group(2) or "the authors' setting"
                    return f"{found.group(1)} trainer: {changed}"
    except OSError:
        pass
    return ""
