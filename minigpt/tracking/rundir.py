"""The local run directory, the record that analysis reads and that survives with no network at all:
``config.json``, line-buffered ``metrics.jsonl``, ``summary.json``; ``new_run_dir`` names and creates it."""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from minigpt.storage import atomic_write_bytes, atomic_write_json, remove_interrupted_writes
from minigpt.tracking.logger import Logger, jsonable


class RunDirLogger(Logger):
    """The local record of a run. ``metrics.jsonl`` (and ``samples.jsonl``, the periodic samples) are appended
    line by line, so a crash loses at most the line being written; readers skip a torn last line (see
    ``read_metrics``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._file = None
        self._summary: dict[str, Any] = {}

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "metrics.jsonl", "summary.json", "samples.jsonl"):
            remove_interrupted_writes(self.run_dir, name)
        atomic_write_json(self.run_dir / "config.json", config)
        for name in ("metrics.jsonl", "samples.jsonl"):
            if (self.run_dir / name).exists():  # a fresh start after a crash before the first checkpoint
                self._truncate_after(self.run_dir / name, first_step)  # keeps nothing
        path = self.run_dir / "metrics.jsonl"
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open for the whole run
        summary_path = self.run_dir / "summary.json"
        if first_step > 0 and summary_path.exists():
            self._summary = json.loads(summary_path.read_text())
        self._write_summary(status="running")

    @staticmethod
    def _truncate_after(path: Path, step: int) -> None:
        """On resume, drop lines logged after the checkpoint (they will be logged again) and any torn line."""
        kept = [json.dumps(row) for row in read_metrics(path) if row.get("step", 0) <= step]
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._file is not None:
            row = {"step": step, **{k: jsonable(v) for k, v in metrics.items()}}
            self._file.write(json.dumps(row) + "\n")

    def sample(self, prompt: str, text: str, tokens: int, step: int) -> None:
        row = {"step": step, "train/tokens": tokens, "prompt": prompt, "text": text}
        with open(self.run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def summary(self, metrics: dict[str, Any]) -> None:
        self._summary.update({k: jsonable(v) for k, v in metrics.items()})
        self._write_summary(status=self._summary.get("status", "running"))

    def _write_summary(self, status: str) -> None:
        self._summary["status"] = status
        atomic_write_json(self.run_dir / "summary.json", self._summary)

    def finish(self, status: str = "finished") -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._write_summary(status=status)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl``, skipping a line torn by a crash mid-write."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def new_run_dir(out_dir: Path, name: str) -> Path:
    """Create and return a run directory ``<out_dir>/<name>-<timestamp>-<suffix>`` that no other run has.

    The suffix is the W&B run id that ``wandb agent`` passes (``$WANDB_RUN_ID``), else random; creation is
    exclusive, so two runs started in the same second (parallel sweep runs) never share a directory.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    suffix = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(3)
    while True:
        path = out_dir / f"{name}-{stamp}-{suffix}"
        try:
            path.mkdir()
        except FileExistsError:
            suffix = secrets.token_hex(3)  # taken (also by an agent's id reused on a retry): draw another
            continue
        return path
