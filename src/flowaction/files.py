"""Output files: checked writable before long work, so a late failure throws nothing away."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def ensure_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise ``PermissionError`` (an ``OSError`` naming ``path``) unless a file can be written at
    ``path``: its folder exists or can be made, and accepts a new file. Creates the folder; writes
    nothing else (a probe file is created and removed). Returns ``path`` as a ``Path``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".flowaction-probe-"):
            pass
    except OSError as error:
        raise PermissionError(f"cannot write the {what} {path}: {error.strerror or error}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"cannot write the {what} {path}: the file exists and is read-only")
    return path
