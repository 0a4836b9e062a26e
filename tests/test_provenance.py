"""A run records the code that produced it: the commit, and any uncommitted change beside it."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import tiny_config

from minigpt import provenance, train

REPO_ROOT = Path(__file__).resolve().parent.parent


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def copy_of_the_package(tmp_path: Path) -> Path:
    """A fresh one-commit checkout holding a copy of ``minigpt/``, to edit without touching this one."""
    repo = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "minigpt", repo / "minigpt", ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    return repo


def test_a_clean_checkout_is_recorded_as_its_commit(tmp_path, monkeypatch):
    repo = copy_of_the_package(tmp_path)
    monkeypatch.setattr(provenance, "PACKAGE_DIR", repo / "minigpt")
    state = provenance.source_state()
    assert state.commit == git(repo, "rev-parse", "HEAD").strip()
    assert not state.dirty and state.diff == "" and state.untracked == []


def test_an_edited_model_is_recorded_as_dirty_with_its_diff(tmp_path, monkeypatch):
    repo = copy_of_the_package(tmp_path)
    monkeypatch.setattr(provenance, "PACKAGE_DIR", repo / "minigpt")
    model_py = repo / "minigpt" / "model.py"
    model_py.write_text(model_py.read_text() + "\n# an experiment in progress\n")
    (repo / "notes.txt").write_text("scratch")
    state = provenance.source_state()
    assert state.dirty
    assert "+# an experiment in progress" in state.diff and "minigpt/model.py" in state.diff
    assert state.untracked == ["notes.txt"]


@pytest.mark.slow
def test_a_run_from_an_edited_checkout_keeps_the_diff_in_its_directory(tiny_corpus, tmp_path, monkeypatch):
    edited = provenance.SourceState(commit="a" * 40, dirty=True, diff="--- a/minigpt/model.py\n+change\n")
    monkeypatch.setattr(provenance, "source_state", lambda: edited)
    train.run(tiny_config(tiny_corpus, tmp_path, {"max_steps": 1}))
    run_dir = tmp_path / "run"
    assert (run_dir / "git.diff").read_text() == edited.diff
    recorded = json.loads((run_dir / "config.json").read_text())["_run"]
    assert recorded["git_commit"] == "a" * 40 and recorded["git_dirty"] is True


@pytest.mark.slow
def test_a_run_from_a_clean_checkout_writes_no_diff(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "source_state", lambda: provenance.SourceState(commit="b" * 40))
    train.run(tiny_config(tiny_corpus, tmp_path, {"max_steps": 1}))
    assert not (tmp_path / "run" / "git.diff").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["_run"]["git_dirty"] is False
