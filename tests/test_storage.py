"""Atomic writes: a reader, or a crash at any moment, sees the old file or the new one, never a part."""

import subprocess
import sys
from pathlib import Path

import pytest

from minigpt import storage
from minigpt.storage import atomic_write, atomic_write_bytes, atomic_write_json, remove_interrupted_writes

# A process that dies (no clean-up, no exception handler) after the new file is written and flushed, just
# before the rename that would make it the file.
# storage.py is loaded by its path: the package would import torch, seconds for nothing here.
CRASH_BEFORE_RENAME = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("storage", sys.argv[2])
storage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(storage)
storage.os.replace = lambda *args: os._exit(3)
storage.atomic_write_bytes(sys.argv[1], b"new contents")
"""


def temporaries(directory: Path) -> list[Path]:
    return sorted(directory.glob(f".*{storage.TEMP_SUFFIX}"))


def test_a_crash_between_write_and_rename_leaves_the_old_file(tmp_path):
    target = tmp_path / "summary.json"
    target.write_bytes(b"old contents")
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_BEFORE_RENAME, str(target), storage.__file__],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 3, crashed.stderr
    assert target.read_bytes() == b"old contents"
    (left_behind,) = temporaries(tmp_path)
    assert left_behind.name.startswith(".summary.json.")
    assert left_behind.read_bytes() == b"new contents"  # written in full, never renamed

    remove_interrupted_writes(tmp_path, "summary.json")
    assert temporaries(tmp_path) == [] and target.read_bytes() == b"old contents"


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"step": 1})

    def half_then_fail(f) -> None:
        f.write(b'{"step": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == '{\n  "step": 1\n}\n'
    assert temporaries(tmp_path) == []


def test_a_write_replaces_the_file_and_creates_missing_folders(tmp_path):
    target = tmp_path / "a" / "b" / "model.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert temporaries(target.parent) == []


def test_a_written_file_has_the_permissions_a_plain_open_gives(tmp_path):
    """mkstemp makes owner-only files; the result must be readable as any file the user creates is."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "atomic", b"x")
    assert (tmp_path / "atomic").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_clearing_interrupted_writes_touches_only_that_name(tmp_path):
    for name in (".ckpt-1.pt.abc.tmp", ".ckpt-2.pt.def.tmp", ".summary.json.ghi.tmp", "ckpt-1.pt"):
        (tmp_path / name).write_bytes(b"")
    remove_interrupted_writes(tmp_path, "ckpt-*.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".summary.json.ghi.tmp", "ckpt-1.pt"]
