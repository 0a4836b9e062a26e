"""Crashes lose nothing and untrusted files cannot run code (bad input: tests/test_bad_input.py)."""

import io
import json
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import tiny_config, write_experiment

import run as run_script
from minigpt import checkpoint, sample, tracking, train
from minigpt.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from minigpt.tracking import read_metrics

REPO_ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------- SIGKILL


def stall(marker: Path) -> None:
    """Tell the test that this process has reached its kill point (``marker`` appears); wait to be killed."""
    marker.touch()
    time.sleep(600)


def stall_at_call(owner: object, name: str, nth: int, marker: Path, after: bool = False) -> None:
    """Make the ``nth`` call of ``owner.name`` stall: before it runs, or, with ``after``, once it returns."""
    real, calls = getattr(owner, name), []

    def stalling(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth and not after:
            stall(marker)
        result = real(*args, **kwargs)
        if len(calls) == nth:
            stall(marker)
        return result

    setattr(owner, name, stalling)


def stall_halfway_through_checkpoint(nth: int, marker: Path) -> None:
    """Make the ``nth`` checkpoint write stall with half of its bytes on disk."""
    real_save, saves = torch.save, []

    def save_half_then_stall(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) < nth:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        stall(marker)

    torch.save = save_half_then_stall


def train_in_child(argv: list[str], kill_point: tuple[str, int] | None, marker: Path) -> None:
    """A training process: ``run.py``'s main, stalled at ``kill_point`` (where, and which occurrence in this
    process) after creating ``marker``, so that the test's kill lands exactly there. The patches touch only
    this process: it is a fork of the test."""
    if kill_point is not None:
        where, nth = kill_point
        if where == "mid-checkpoint":
            stall_halfway_through_checkpoint(nth, marker)
        elif where == "mid-step":  # gradients computed, weights not yet updated
            stall_at_call(torch.optim.AdamW, "step", nth, marker)
        elif where == "mid-evaluation":
            stall_at_call(train, "evaluate", nth, marker)
        elif where == "after-log-line":
            stall_at_call(tracking.RunDirLogger, "log", nth, marker, after=True)
        else:
            raise ValueError(f"unknown kill point {where!r}")
    sys.exit(run_script.main(argv))


def wait_until(condition: Callable[[], bool], child: multiprocessing.Process, seconds: float = 300) -> None:
    """Poll ``condition`` until it holds or ``child`` exits. The deadline only turns a hung child into a
    failure instead of a hung suite: a kill point is a few steps away, seconds even on a loaded machine."""
    deadline = time.monotonic() + seconds
    while not condition() and child.is_alive():
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"training process did not reach its kill point in {seconds} s")
        time.sleep(0.005)


def check_run_dir_after_a_crash(run_dir: Path, keep_last: int) -> list[int]:
    """Every listed checkpoint loads (weights only) and is the step it is named for; temporary files are
    never listed; the metrics file reads. Returns the checkpoint steps."""
    found = list_checkpoints(run_dir)
    for step, path in found:
        assert not path.name.startswith(".")
        assert load_checkpoint(path)["step"] == step
    assert len(found) <= keep_last + 2  # the kept ones, the best, and one being rotated in
    if (run_dir / "metrics.jsonl").exists():
        read_metrics(run_dir / "metrics.jsonl")
    return [step for step, _ in found]


@pytest.mark.slow
def test_sigkill_mid_step_mid_evaluation_mid_checkpoint_or_after_a_log_line_loses_nothing(
    tiny_corpus, tmp_path
):
    overrides = {
        "dropout": 0.1,
        "max_steps": 40,  # more than the eight attempts get through
        "ckpt_interval": 2,
        "keep_last": 2,
        "eval_interval": 5,
        "eval_batches": 1,
    }
    reference = tiny_config(tiny_corpus, tmp_path / "reference", overrides)
    train.run(reference)  # also warms every import, so forked children start training at once
    experiment = write_experiment(
        tmp_path / "experiment.py", tiny_config(tiny_corpus, tmp_path / "crashing", overrides)
    )
    run_dir = tmp_path / "crashing" / "run"

    fork = multiprocessing.get_context("fork")
    # Where each attempt is killed, counted from its own start (a resume from the last checkpoint).
    plan = [
        ("mid-step", 3),
        ("mid-checkpoint", 2),
        ("after-log-line", 3),
        ("mid-evaluation", 1),
        ("mid-checkpoint", 1),
        ("mid-step", 1),
        ("mid-checkpoint", 3),
        ("after-log-line", 8),
    ]
    for attempt, kill_point in enumerate(plan):
        steps_before = check_run_dir_after_a_crash(run_dir, keep_last=2)
        resume = [f"--resume={run_dir}"] if steps_before else []
        partial_before = set(run_dir.glob(".ckpt-*.pt.*.tmp"))
        marker = tmp_path / f"stalled-{attempt}"
        child = fork.Process(target=train_in_child, args=([str(experiment), *resume], kill_point, marker))
        child.start()
        wait_until(marker.exists, child)
        assert child.is_alive(), f"attempt {attempt} ended ({child.exitcode}) before reaching {kill_point}"
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        steps_after = check_run_dir_after_a_crash(run_dir, keep_last=2)
        assert not steps_before or steps_after, "a crash left no valid checkpoint"
        if kill_point[0] == "mid-checkpoint":
            (partial,) = set(run_dir.glob(".ckpt-*.pt.*.tmp")) - partial_before  # the write cut off
            assert partial.stat().st_size > 0
        if attempt == 3:  # a line torn by the crash: the reader skips it and the resume drops it
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write('{"step": 999, "train/lo')
    assert checkpoint.list_checkpoints(run_dir)[-1][0] >= 8, "the attempts made too little progress"

    child = fork.Process(target=train_in_child, args=([str(experiment), f"--resume={run_dir}"], None, marker))
    child.start()
    child.join(300)
    assert child.exitcode == 0

    reference_dir = tmp_path / "reference" / "run"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole
    train_rows = [(row["step"], row["train/loss"]) for row in rows if "train/loss" in row]
    expected = [
        (row["step"], row["train/loss"])
        for row in read_metrics(reference_dir / "metrics.jsonl")
        if "train/loss" in row
    ]
    assert train_rows == expected  # bit for bit, each step once
    # Validation by step (a kill between the final evaluation's line and the exit logs that line twice).
    val = {row["step"]: row["val/loss"] for row in rows if "val/loss" in row}
    assert val == {
        row["step"]: row["val/loss"]
        for row in read_metrics(reference_dir / "metrics.jsonl")
        if "val/loss" in row
    }
    final, final_reference = load_checkpoint(run_dir), load_checkpoint(reference_dir)
    assert final["step"] == 40
    for key in final_reference["model"]:
        assert torch.equal(final["model"][key], final_reference["model"][key]), key
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert not list(run_dir.glob(".*.tmp"))  # interrupted writes were cleared
    assert len(list_checkpoints(run_dir)) <= 3


def test_rotation_keeps_the_last_and_the_best_with_always_one_valid(tmp_path, monkeypatch):
    real_unlink = Path.unlink
    newest: list[int] = []

    def checked_unlink(path: Path, missing_ok: bool = False) -> None:
        if re.fullmatch(r"ckpt-\d+\.pt", path.name):  # about to delete a checkpoint: the new one is complete
            assert load_checkpoint(path.parent)["step"] == newest[-1]
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", checked_unlink)
    weights = {"w": torch.zeros(3)}
    for step, best in [(1, None), (2, 1), (3, 1), (4, 1), (5, 4), (6, 4), (7, 4)]:
        newest.append(step)
        save_checkpoint(tmp_path, {"step": step, "model": weights}, keep_last=2, best_step=best)
        steps = [s for s, _ in list_checkpoints(tmp_path)]
        assert steps == sorted({step - 1, step} - {0} | ({best} if best else set()))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6, 7]


# ----------------------------------------------------------------------------------------------- security


class CreatesAFile:
    """A pickle payload: unpickling it calls ``Path.touch`` on a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "ckpt-0000001.pt"
    torch.save({"format": checkpoint.FORMAT, "step": 1, "model": CreatesAFile(marker)}, path)
    with pytest.raises(CheckpointError, match="not a loadable MiniGPT checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        sample.load_model_for_sampling(checkpoint=tmp_path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a plain pickle load runs it
    assert marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    for path in sorted((REPO_ROOT / "minigpt").glob("*.py")):
        for call in re.findall(r"torch\.load\(([^)]*)\)", path.read_text()):
            assert "weights_only=True" in call, f"{path.name}: torch.load({call})"
