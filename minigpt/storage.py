"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
"""Temporary files are ``.<name>.<random>.tmp`` beside their target; one left behind was cut off."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# mkstemp creates files readable by their owner only; give the final file the permissions that a plain
# open() would, so that run records and checkpoints stay readable by whoever may read the folder.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path``, flush it to disk, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_interrupted_writes(directory: str | Path, name: str) -> None:
    """Delete the temporary files that writes of ``directory/name`` (a glob) cut off by a crash left behind.

    Call it only where no other process writes those files at the same time.
    """
    for partial in Path(directory).glob(f".{name}.*{TEMP_SUFFIX}"):
        partial.unlink(missing_ok=True)


def why_unwritable(directory: str | Path) -> str | None:
    """Why files could not be written in ``directory`` (creating it if missing), or None; creates nothing.

    It writes a temporary file for real, in the folder or its nearest existing parent: permission bits do
    not bind root, and a read-only mount shows only when writing. The message names the folder and says
    "cannot create" or "is not writable".
    """
    directory = Path(directory)
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        return f"cannot create {directory}: {existing} is a file"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        if existing == directory:
            return f"{directory} is not writable ({e.strerror})"
        return f"cannot create {directory}: {existing} is not writable ({e.strerror})"
    return None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
