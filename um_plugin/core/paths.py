"""The one write probe: find out before any work that a file could be written later."""
from __future__ import annotations

import os
from pathlib import Path


def probe_write(path) -> None:
    """Create ``path``'s folder, then create and remove an empty file at ``path``; an
    ``OSError`` says why that failed (read-only folder, a file where a folder should be)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb"):
        pass
    os.remove(path)
