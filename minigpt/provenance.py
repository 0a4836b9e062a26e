"""What code produced a run: the commit, whether the working tree differed from it, and how.

A run made with an edited ``model.py`` must not be recorded as the committed code, so the run directory gets
the uncommitted diff beside the commit (as modded-nanogpt logs its own source).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from minigpt.storage import atomic_write_bytes

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass
class SourceState:
    commit: str | None = None
    """``git rev-parse HEAD``; None outside a git checkout (an installed wheel) or without git."""
    dirty: bool = False
    """Tracked files differ from the commit, or untracked files exist."""
    diff: str = ""
    """``git diff HEAD``: staged and unstaged changes to tracked files."""
    untracked: list[str] = field(default_factory=list)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=PACKAGE_DIR)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def source_state() -> SourceState:
    """The state of the checkout that holds this package."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return SourceState()
    diff = _git("diff", "HEAD", "--no-color") or ""
    untracked = (_git("ls-files", "--others", "--exclude-standard", "--full-name", ":/") or "").split()
    return SourceState(commit.strip(), bool(diff or untracked), diff, untracked)


def record_diff(run_dir: Path, source: SourceState) -> None:
    """Write ``git.diff`` for the process that runs now; a resume from a clean tree removes the diff an
    earlier process left, so the run directory never pairs ``git_dirty: false`` with a stale diff."""
    path = run_dir / "git.diff"
    if source.diff:
        atomic_write_bytes(path, source.diff.encode())
    else:
        path.unlink(missing_ok=True)
