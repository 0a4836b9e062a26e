"""Where metrics go. The training loop talks to ``Logger``; the backends here know the rest.

- ``RunDirLogger``: the local run directory (always on): ``config.json``, line-buffered ``metrics.jsonl``,
  ``summary.json``. It is the record that analysis reads and that survives with no network at all.
- ``WandbLogger``: Weights & Biases, offline unless asked otherwise, never blocking on a login or a network.
- ``ConsoleLogger``: a rich progress bar while training and a summary table at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

from minigpt.storage import atomic_write_bytes, atomic_write_json, remove_interrupted_writes


class Logger:
    """What the training loop may do with metrics. Every method is optional for a backend."""

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        """Called once before the first step with the resolved config (and run metadata)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record metrics at an optimizer step."""

    def summary(self, metrics: dict[str, Any]) -> None:
        """Record final figures (perplexities, throughput)."""

    def finish(self, failed: bool = False) -> None:
        """Flush and close; ``failed`` marks a run that stopped on an error."""

    @property
    def run_id(self) -> str | None:
        """An identifier that lets a resumed run continue the same tracked run, if the backend has one."""
        return None


class MultiLogger(Logger):
    """Fans every call out to several backends."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        for logger in self.loggers:
            logger.start(config, total_steps, first_step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log(metrics, step)

    def summary(self, metrics: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.summary(metrics)

    def finish(self, failed: bool = False) -> None:
        for logger in self.loggers:
            logger.finish(failed)

    @property
    def run_id(self) -> str | None:
        return next((logger.run_id for logger in self.loggers if logger.run_id), None)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunDirLogger(Logger):
    """The local record of a run. ``metrics.jsonl`` is appended line by line, so a crash loses at most the
    line being written; readers skip a torn last line (see ``read_metrics``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._file = None
        self._summary: dict[str, Any] = {}

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "metrics.jsonl", "summary.json"):
            remove_interrupted_writes(self.run_dir, name)
        atomic_write_json(self.run_dir / "config.json", config)
        path = self.run_dir / "metrics.jsonl"
        if path.exists():  # a fresh start after a crash before the first checkpoint keeps nothing
            self._truncate_after(path, first_step)
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
            row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
            self._file.write(json.dumps(row) + "\n")

    def summary(self, metrics: dict[str, Any]) -> None:
        self._summary.update({k: _jsonable(v) for k, v in metrics.items()})
        self._write_summary(status=self._summary.get("status", "running"))

    def _write_summary(self, status: str) -> None:
        self._summary["status"] = status
        atomic_write_json(self.run_dir / "summary.json", self._summary)

    def finish(self, failed: bool = False) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._write_summary(status="failed" if failed else "finished")


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


def wandb_mode(option: str) -> str:
    """The W&B mode: the option, else ``$WANDB_MODE``, else offline (``auto`` never goes online by itself)."""
    if option != "auto":
        return option
    mode = os.environ.get("WANDB_MODE", "offline")
    return {"dryrun": "offline", "run": "online"}.get(mode, mode)


PROBE_SECONDS = 3.0


def can_connect(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` seconds, name lookup
    included (it runs in a daemon thread, since a stalled DNS lookup ignores socket timeouts)."""
    parsed = urllib.parse.urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    connected = threading.Event()

    def connect() -> None:
        with contextlib.suppress(OSError), socket.create_connection((parsed.hostname, port), timeout=timeout):
            connected.set()

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return connected.is_set()


class WandbLogger(Logger):
    """Weights & Biases. The mode goes into ``WANDB_MODE`` before ``wandb.init`` (passing ``mode=`` alone
    still lets wandb reach for the network). An online start first checks that the W&B server answers at
    all (a few seconds at most, instead of wandb's long retries), and any failure falls back to offline."""

    def __init__(
        self,
        mode: str,
        project: str,
        run_dir: str | Path,
        name: str,
        group: str = "",
        tags: tuple[str, ...] = (),
        resume_id: str | None = None,
    ) -> None:
        self.mode = mode
        self.project = project
        self.run_dir = Path(run_dir)
        self.name = name
        self.group = group or None
        self.tags = list(tags)
        self.resume_id = resume_id
        self._run = None

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        import wandb

        os.environ["WANDB_MODE"] = self.mode
        os.environ.setdefault("WANDB_SILENT", "true")
        directory = os.environ.get("WANDB_DIR") or str(self.run_dir)
        Path(directory).mkdir(parents=True, exist_ok=True)
        if self.mode == "online":
            base_url = wandb.setup().settings.base_url
            if not can_connect(base_url):
                self._go_offline(f"{base_url} did not accept a connection")
        # The mode is also passed explicitly: wandb keeps the settings of its first start in a process, so
        # the environment variable alone would not switch a later run (or the fallback) to offline.
        kwargs = dict(
            project=self.project,
            name=self.name,
            group=self.group,
            tags=self.tags,
            config=config,
            dir=directory,
            id=self.resume_id,
            resume="allow" if self.resume_id else None,
            settings=wandb.Settings(init_timeout=30, silent=True),
        )
        try:
            self._run = wandb.init(mode=self.mode, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to reach W&B must not stop training
            if self.mode != "online":
                raise
            self._go_offline(str(e).splitlines()[0])
            self._run = wandb.init(mode=self.mode, **kwargs)

    def _go_offline(self, reason: str) -> None:
        warnings.warn(
            f"W&B online start failed ({reason}); logging offline instead (upload later with `wandb sync`)",
            stacklevel=3,
        )
        os.environ["WANDB_MODE"] = self.mode = "offline"

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._run is not None:
            self._guarded(lambda: self._run.log(metrics, step=step))

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._run is not None:
            self._guarded(lambda: self._run.summary.update(metrics))

    def _guarded(self, call) -> None:
        """W&B failing in the middle of a run must not stop training: warn once and carry on without it
        (the run directory still records everything)."""
        try:
            call()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"W&B stopped working ({e}); training goes on without it", stacklevel=3)
            self.resume_id, self._run = self._run.id, None

    def finish(self, failed: bool = False) -> None:
        if self._run is not None:
            with contextlib.suppress(Exception):
                self._run.finish(exit_code=1 if failed else 0)
            self._run = None

    @property
    def run_id(self) -> str | None:
        return self._run.id if self._run is not None else self.resume_id


class ConsoleLogger(Logger):
    """A rich progress bar with loss, perplexity, throughput and ETA; a summary table at the end."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self._progress = None
        self._task = None

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_steps, completed=first_step, stats="")

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._progress is None:
            return
        stats = []
        if "train/loss" in metrics:
            stats.append(f"loss {metrics['train/loss']:.3f}")
            stats.append(f"ppl {math.exp(min(metrics['train/loss'], 50)):.1f}")
        if "perf/tokens_per_sec" in metrics:
            stats.append(f"{metrics['perf/tokens_per_sec']:,.0f} tok/s")
        if "val/loss" in metrics:
            stats.append(f"val {metrics['val/loss']:.3f}")
            self.console.print(
                f"step {step}: val loss {metrics['val/loss']:.4f}, ppl {metrics.get('val/ppl', math.nan):.2f}"
            )
        elif not self.console.is_terminal and "train/loss" in metrics:
            self.console.print(f"step {step}: " + ", ".join(stats))
        self._progress.update(self._task, completed=step, **({"stats": " | ".join(stats)} if stats else {}))

    def summary(self, metrics: dict[str, Any]) -> None:
        from rich.table import Table

        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        table = Table(title="summary")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in metrics.items():
            table.add_row(key, f"{value:,.4f}" if isinstance(value, float) else str(value))
        self.console.print(table)

    def finish(self, failed: bool = False) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
