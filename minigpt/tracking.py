"""Where metrics go. The training loop talks to ``Logger``; the backends here know the rest.

- ``RunDirLogger``: the local run directory (always on): ``config.json``, line-buffered ``metrics.jsonl``,
  ``summary.json``. It is the record that analysis reads and that survives with no network at all.
- ``WandbLogger``: Weights & Biases, never blocking on a login or a network: online when the user can use
  W&B (``wandb_mode``), falling back to offline when the server does not answer.
- ``ConsoleLogger``: where the run is and how it is set up, a progress bar with an ETA, the final figures in a
  few lines, and the commands that come next.

``new_run_dir`` names and creates a run's directory; ``build_logger`` assembles the loggers of one run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import netrc
import os
import re
import secrets
import socket
import sys
import threading
import time
import urllib.parse
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from minigpt.config import ConfigError, flatten, non_variant_keys
from minigpt.storage import atomic_write_bytes, atomic_write_json, remove_interrupted_writes


class Logger:
    """What the training loop may do with metrics. Every method is optional for a backend."""

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        """Called once before the first step with the resolved config (and run metadata)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record metrics at an optimizer step."""

    def summary(self, metrics: dict[str, Any]) -> None:
        """Record final figures (perplexities, throughput)."""

    def artifact(
        self,
        path: Path,
        name: str,
        type: str,
        aliases: tuple[str, ...] = (),
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Keep the file or directory ``path`` with the run (a model, an adapter, a report), as a version of
        the artifact ``name`` with ``aliases`` (``latest``, ``best``, ``step-N``) and ``metadata``."""

    def finish(self, status: str = "finished") -> None:
        """Flush and close. ``status`` is how the run ended: ``finished``, ``failed`` (an error),
        ``diverged`` (a non-finite loss or gradient) or ``interrupted`` (Ctrl-C, with a checkpoint to resume
        from)."""

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

    def artifact(
        self,
        path: Path,
        name: str,
        type: str,
        aliases: tuple[str, ...] = (),
        metadata: dict[str, Any] | None = None,
    ) -> None:
        for logger in self.loggers:
            logger.artifact(path, name, type, aliases, metadata)

    def finish(self, status: str = "finished") -> None:
        for logger in reversed(self.loggers):  # the last started closes first: the console ends the story
            logger.finish(status)

    @property
    def run_id(self) -> str | None:
        return next((logger.run_id for logger in self.loggers if logger.run_id), None)


# How ``run.py`` exits after a run that ended with each status (W&B records the same code), so that a
# script or ``wandb agent`` can tell a run that diverged from a mistyped key (2, a usage error).
EXIT_CODES = {"finished": 0, "failed": 1, "diverged": 3, "interrupted": 130}


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


DEFAULT_BASE_URL = "https://api.wandb.ai"


def wandb_base_url() -> str:
    """The W&B server this process would talk to."""
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def has_wandb_credentials(base_url: str) -> bool:
    """Whether W&B could log in without asking: ``$WANDB_API_KEY``, or a netrc entry (``$NETRC``, else
    ``~/.netrc``) for the server's host, which is where ``wandb login`` stores the key."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    host = urllib.parse.urlsplit(base_url).netloc
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode(option: str) -> str:
    """The W&B mode. ``auto`` takes ``$WANDB_MODE`` when it is set, else online under ``wandb agent``
    (it sets ``WANDB_SWEEP_ID``) or when the user has W&B credentials for the server, else offline."""
    if option != "auto":
        return option
    if "WANDB_MODE" in os.environ:
        mode = os.environ["WANDB_MODE"]
        return {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if os.environ.get("WANDB_SWEEP_ID") or has_wandb_credentials(wandb_base_url()):
        return "online"
    return "offline"


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


# Keys that say which seed, or how or where one run is carried out or recorded, not which experiment it is:
# runs that differ only in these are the same variant (the config's roles decide).
RUN_SPECIFIC_KEYS = non_variant_keys()


def variant_group(config: dict[str, Any]) -> str:
    """A W&B group for the variant ``config`` belongs to: its name plus a hash of every key that is not run
    specific, so W&B's grouped view averages the seeds of one variant and nothing else."""
    variant = {
        k: v for k, v in flatten(config).items() if k not in RUN_SPECIFIC_KEYS and not k.startswith("_")
    }
    digest = hashlib.sha1(json.dumps(variant, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{config.get('name', 'experiment')}-{digest}"


def build_logger(
    config: dict[str, Any], run_dir: Path, resume_id: str | None = None, first_step: int = 0
) -> Logger:
    """The loggers of one run from its resolved config (``ExperimentConfig.to_dict()``): the run directory,
    the console and, unless ``log.wandb`` is disabled, W&B with its mode, group, job type and tags."""
    log = config["log"]
    loggers: list[Logger] = [RunDirLogger(run_dir), ConsoleLogger()]
    mode = wandb_mode(log["wandb"])
    if mode != "disabled":
        tags = [t.strip() for t in log["tags"].split(",") if t.strip()]
        if log["sweep"] and log["sweep"] not in tags:
            tags.append(log["sweep"])
        loggers.append(
            WandbLogger(
                mode,
                log["project"],
                run_dir,
                run_dir.name,
                group=log["group"] or variant_group(config),
                tags=tuple(tags),
                notes=log.get("notes", ""),
                resume_id=resume_id,
                job_type="finetune" if config.get("init_from") else "train",
                first_step=first_step,
                rewind=log.get("wandb_rewind", False),
                uses=config.get("init_from", "")
                if is_artifact_reference(config.get("init_from", ""))
                else "",
            )
        )
    return MultiLogger(loggers)


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


ARTIFACT_SCHEME = "wandb-artifact://"


def is_artifact_reference(value: str) -> bool:
    """Whether ``value`` names a W&B artifact: ``wandb-artifact://[entity/]project/name:version``."""
    return value.startswith(ARTIFACT_SCHEME)


def fetch_artifact(reference: str, wandb_option: str, dest: Path) -> Path:
    """Download the artifact ``reference`` names into ``dest/<name>-<version>`` and return what it holds:
    its one file (a checkpoint), else the directory (an HF export or a run directory). Needs W&B online."""
    name = reference.removeprefix(ARTIFACT_SCHEME)
    mode = wandb_mode(wandb_option)
    if mode != "online":
        raise ConfigError(
            f"init_from={reference!r} is a W&B artifact, which needs W&B online (this run's mode is {mode}): "
            "set WANDB_API_KEY or run `wandb login`, and pass --wandb=online or auto"
        )
    import wandb

    try:
        artifact = wandb.Api().artifact(name)
        directory = Path(artifact.download(root=str(dest / _artifact_name(name))))
    except Exception as e:  # noqa: BLE001 - wandb raises many kinds; all mean "cannot get it"
        raise ConfigError(f"init_from={reference!r}: W&B could not provide the artifact: {e}") from None
    files = [p for p in directory.rglob("*") if p.is_file()]
    return files[0] if len(files) == 1 else directory


def log_artifact_run(path: Path, name: str, type: str, project: str, wandb_option: str = "auto") -> str:
    """Log ``path`` as an artifact of a short W&B run of its own (job type ``report``, for a command that
    is not training, such as the report); return where it went: the run's URL or its ``wandb sync``
    command. Offline, the artifact waits with the run for ``wandb sync``."""
    mode = wandb_mode(wandb_option)
    if mode == "disabled":
        return "not logged: W&B is disabled"
    run_name = f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    # W&B's own files go beside ``path``, not into it (the artifact would then hold them).
    logger = WandbLogger(mode, project, Path(path).resolve().parent, run_name, job_type=type)
    logger.start({"artifact": str(path)}, total_steps=0)
    logger.artifact(Path(path), name, type)
    where = logger.location
    logger.finish()
    return where


def _artifact_name(name: str) -> str:
    """W&B artifact names take letters, digits, dashes, underscores and dots only."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:128]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class WandbLogger(Logger):
    """Weights & Biases. The mode goes into ``WANDB_MODE`` before ``wandb.init`` (passing ``mode=`` alone
    still lets wandb reach for the network). An online start first checks that the W&B server answers at
    all (a few seconds at most, instead of wandb's long retries), and any failure falls back to offline.

    Every series is plotted against ``train/tokens`` (tokens seen), so runs with different batch sizes line
    up; the summary of ``val/loss`` is its minimum. A resumed run continues the same W&B run id
    (``resume="allow"``); with ``rewind`` an online one instead rewinds the run to the checkpoint's step
    (``resume_from``), so the steps logged again replace the ones logged before the interruption."""

    INIT_TIMEOUT = 30.0

    def __init__(
        self,
        mode: str,
        project: str,
        run_dir: str | Path,
        name: str,
        group: str = "",
        tags: tuple[str, ...] = (),
        resume_id: str | None = None,
        job_type: str = "train",
        first_step: int = 0,
        rewind: bool = False,
        notes: str = "",
        uses: str = "",
    ) -> None:
        self.notes = notes or None
        self.uses = uses
        self.mode = mode
        self.rewind = rewind
        self.project = project
        self.run_dir = Path(run_dir)
        self.name = name
        self.group = group or None
        self.tags = list(tags)
        self.resume_id = resume_id
        self.job_type = job_type
        self.first_step = first_step
        self.base_url = DEFAULT_BASE_URL
        self._run = None

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        import wandb

        self.first_step = first_step or self.first_step
        # wandb keeps the settings of its first start in a process; the server is read afresh for each run.
        self.base_url = os.environ.get("WANDB_BASE_URL") or wandb.setup().settings.base_url
        os.environ["WANDB_MODE"] = self.mode
        os.environ.setdefault("WANDB_SILENT", "true")
        directory = os.environ.get("WANDB_DIR") or str(self.run_dir)
        Path(directory).mkdir(parents=True, exist_ok=True)
        if self.mode == "online" and not can_connect(self.base_url):
            self._go_offline(f"{self.base_url} did not accept a connection")
        try:
            self._run = wandb.init(**self._init_kwargs(config, directory))
        except Exception as e:  # noqa: BLE001 - any failure to reach W&B must not stop training
            if self.mode != "online":
                raise
            self._go_offline(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}")
            # wandb's service still holds the run id of the failed start; a resume needs that id again.
            with contextlib.suppress(Exception):
                wandb.teardown()
            self._run = wandb.init(**self._init_kwargs(config, directory))
        self._define_metrics()
        if self.uses and self.mode == "online":
            self._use_artifact(self.uses.removeprefix(ARTIFACT_SCHEME))
        if self.resume_id and self.first_step and not self._rewinds:
            _say(
                f"W&B resume: this part logs the steps after {self.first_step} into run {self.resume_id}. "
                "W&B keeps a step it already has and drops it if logged again, so steps between the "
                "checkpoint and the interruption show their first values there; metrics.jsonl in the run "
                "directory holds the resumed ones"
                + ("" if self.mode == "offline" else " (--wandb_rewind=true replaces them in W&B too)")
            )
        if self.mode == "offline":
            _say(f"W&B is offline; upload this run later with: {self.sync_command}")
        if self.mode == "online" and self._run is not None:
            _say(self.location)  # a long run's dashboard is worth having from its first step

    def _init_kwargs(self, config: dict[str, Any], directory: str) -> dict[str, Any]:
        import wandb

        # The mode is also passed explicitly: wandb keeps the settings of its first start in a process, so
        # the environment variable alone would not switch a later run (or the fallback) to offline.
        kwargs: dict[str, Any] = dict(
            mode=self.mode,
            project=self.project,
            name=self.name,
            group=self.group,
            tags=self.tags,
            notes=self.notes,
            job_type=self.job_type,
            # Dotted keys, the names ``wandb agent`` gives a sweep's parameters: nested, each swept key would
            # be two columns of the runs table (the agent's ``model.n_head`` and ``model`` > ``n_head``).
            config=flatten(config),
            dir=directory,
            settings=wandb.Settings(base_url=self.base_url, init_timeout=self.INIT_TIMEOUT, silent=True),
        )
        if self._rewinds:
            kwargs["resume_from"] = f"{self.resume_id}?_step={self.first_step}"
        elif self.resume_id:
            kwargs.update(id=self.resume_id, resume="allow")
        return kwargs

    def _use_artifact(self, name: str) -> None:
        """Record that this run starts from the artifact ``name``, so W&B's lineage graph links the two (the
        download itself happened before the run, in ``fetch_artifact``)."""
        try:
            self._run.use_artifact(name)
        except Exception as e:  # noqa: BLE001 - lineage is worth a warning, never the run
            warnings.warn(f"W&B did not record that this run uses {name}: {e}", stacklevel=3)

    @property
    def _rewinds(self) -> bool:
        """Whether this start rewinds the run: asked for, online (the server does it) and resuming."""
        return self.rewind and self.mode == "online" and bool(self.resume_id and self.first_step)

    def _define_metrics(self) -> None:
        self._guarded(lambda: self._run.define_metric("train/tokens"))
        self._guarded(lambda: self._run.define_metric("*", step_metric="train/tokens"))
        self._guarded(lambda: self._run.define_metric("val/loss", step_metric="train/tokens", summary="min"))

    def _go_offline(self, reason: str) -> None:
        warnings.warn(
            f"W&B online start failed ({reason}); logging offline instead (upload later with `wandb sync`)",
            stacklevel=3,
        )
        os.environ["WANDB_MODE"] = self.mode = "offline"

    @property
    def sync_command(self) -> str:
        """The command that uploads this offline run (its ``offline-run-*`` folder)."""
        where = Path(self._run.dir).parent if self._run is not None else Path(self.run_dir) / "wandb"
        return f"wandb sync {where}"

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._run is not None:
            self._guarded(lambda: self._run.log(metrics, step=step))

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._run is not None:
            self._guarded(lambda: self._run.summary.update(metrics))

    def artifact(
        self,
        path: Path,
        name: str,
        type: str,
        aliases: tuple[str, ...] = (),
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Log ``path`` as a W&B artifact; offline, it is kept with the run and ``wandb sync`` uploads it.
        The files are copied into W&B's staging area here, so ``path`` may be overwritten afterwards."""
        if self._run is None:
            return
        import wandb

        def log_artifact() -> None:
            clean = {k: _jsonable(v) for k, v in (metadata or {}).items()}
            artifact = wandb.Artifact(_artifact_name(name), type=type, metadata=clean)
            if Path(path).is_dir():
                artifact.add_dir(str(path))
            else:
                artifact.add_file(str(path))
            self._run.log_artifact(artifact, aliases=list(aliases) or None)

        self._guarded(log_artifact)

    def _guarded(self, call) -> None:
        """W&B failing in the middle of a run must not stop training: warn once and carry on without it
        (the run directory still records everything)."""
        if self._run is None:
            return
        try:
            call()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"W&B stopped working ({e}); training goes on without it", stacklevel=3)
            self.resume_id, self._run = self._run.id, None

    @property
    def location(self) -> str:
        """Where the run can be seen: its URL online, else the command that uploads it."""
        if self.mode == "online" and self._run is not None:
            return f"W&B run: {self._run.url}"
        return f"W&B (offline): upload with {self.sync_command}"

    def finish(self, status: str = "finished") -> None:
        if self._run is None:
            return
        where = self.location
        with contextlib.suppress(Exception):
            self._run.finish(exit_code=EXIT_CODES.get(status, EXIT_CODES["failed"]))
        self._run = None
        _say(where)

    @property
    def run_id(self) -> str | None:
        return self._run.id if self._run is not None else self.resume_id


def format_duration(seconds: float) -> str:
    """``1h05m``, ``4m10s`` or ``12s``."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


# The splits of the final evaluation, by their key in the summary and their name in the console.
SPLITS = (("val", "validation"), ("test", "test"))

# An ETA beyond this on a CPU is worth a word: the user probably wanted the CPU profile.
LONG_CPU_RUN_SECONDS = 2 * 3600


class ConsoleLogger(Logger):
    """Says where things are: the run's set-up at the start; a progress bar with loss, perplexity,
    throughput and ETA while training (one line per logged step when not on a terminal); a few lines of
    final figures; and at the end the run directory and the commands that come next."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self._progress = None
        self._task = None
        self._run: dict[str, Any] = {}
        self._config: dict[str, Any] = {}
        self._total_steps = 0
        self._clock: tuple[float, int] | None = None
        self._warned_long = False
        self._forecast_done = False

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._config, self._run = config, config.get("_run", {})
        self._total_steps = total_steps
        self.console.print(self.start_line(first_step), soft_wrap=True, highlight=False, markup=False)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_steps, completed=first_step, stats="")

    def start_line(self, first_step: int) -> str:
        run = self._run
        parts = [f"run directory {run.get('run_dir', '?')}"]
        device = f"device {run.get('device', '?')}"
        if run.get("world_size", 1) > 1:
            device += f" x {run['world_size']} processes"
        parts.append(device)
        if run.get("threads"):
            parts.append(f"{run['threads']} threads")
        parts.append(f"precision {run.get('precision', '?')}")
        if "params" in run:
            parts.append(f"{run['params']:,} parameters")
        if run.get("max_minutes"):
            ceiling = f"{run['tokens_planned']:,} tokens, " if "tokens_planned" in run else ""
            parts.append(
                f"training for {run['max_minutes']:g} minutes (at most {ceiling}{self._total_steps:,} steps)"
            )
        elif "tokens_planned" in run:
            parts.append(f"{run['tokens_planned']:,} tokens planned over {self._total_steps:,} steps")
        if first_step:
            parts.append(f"resuming at step {first_step}")
        return "; ".join(parts)

    def _pace(self, step: int) -> tuple[float, float] | None:
        """Seconds since the first logged step (which includes warm-up costs) and seconds per step since then;
        None until two logged steps have been seen."""
        now = time.monotonic()
        if self._clock is None:
            self._clock = (now, step)
            return None
        started, first = self._clock
        if step <= first:
            return None
        return now - started, (now - started) / (step - first)

    def eta_seconds(self, step: int) -> float | None:
        """Seconds left at the pace so far, capped by the time budget; None until the pace is known."""
        pace = self._pace(step)
        if pace is None:
            return None
        elapsed, seconds_per_step = pace
        left = (self._total_steps - step) * seconds_per_step
        budget = self._run.get("max_minutes") or 0
        if budget:
            left = min(left, max(0.0, budget * 60 - elapsed))
        return left

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._progress is None:
            return
        stats = []
        if "train/loss" in metrics:
            stats.append(f"loss {metrics['train/loss']:.3f}")
            stats.append(f"ppl {math.exp(min(metrics['train/loss'], 50)):.1f}")
        if "perf/tokens_per_sec" in metrics:
            stats.append(f"{metrics['perf/tokens_per_sec']:,.0f} tok/s")
        eta = self.eta_seconds(step) if "train/loss" in metrics else None
        if eta is not None:
            stats.append(f"eta {format_duration(eta)}")
            self._forecast_budget(step)
            self._warn_if_long(eta)
        if "val/loss" in metrics:
            stats.append(f"val {metrics['val/loss']:.3f}")
            self.console.print(
                f"step {step}: val loss {metrics['val/loss']:.4f}, ppl {metrics.get('val/ppl', math.nan):.2f}"
            )
        elif not self.console.is_terminal and "train/loss" in metrics:
            self.console.print(f"step {step}: " + ", ".join(stats))
        self._progress.update(self._task, completed=step, **({"stats": " | ".join(stats)} if stats else {}))

    def _forecast_budget(self, step: int) -> None:
        """Under a time budget the tokens a run will see depend on the machine, so once the pace is known,
        say where the budget will end."""
        budget = self._run.get("max_minutes") or 0
        pace = None if self._forecast_done or not budget else self._pace(step)
        if pace is None:
            return
        self._forecast_done = True
        _, seconds_per_step = pace
        first = self._clock[1]
        last_step = min(self._total_steps, first + int(budget * 60 / seconds_per_step))
        if last_step >= self._total_steps:
            return
        tokens = ""
        if self._run.get("tokens_planned"):
            tokens = f", about {last_step * self._run['tokens_planned'] // self._total_steps:,} tokens"
        self.console.print(
            f"at this pace the {budget:g}-minute budget ends near step {last_step:,}{tokens}",
            highlight=False,
        )

    def _warn_if_long(self, eta: float) -> None:
        if (
            self._warned_long
            or eta <= LONG_CPU_RUN_SECONDS
            or not str(self._run.get("device", "")).startswith("cpu")
        ):
            return
        self._warned_long = True
        self.console.print(
            f"this run needs about {format_duration(eta)} more on the CPU; for a CPU-sized run use "
            "experiments/cpu_hour.py (the best model this code trains in an hour), experiments/tiny.py "
            "(about 2 minutes), or cap this one with --train.max_minutes=60"
        )

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        for line in self.summary_lines(metrics):
            self.console.print(line, soft_wrap=True, highlight=False, markup=False)

    def summary_lines(self, metrics: dict[str, Any]) -> list[str]:
        """The few figures a person reads at the end; the rest stays in ``summary.json``."""

        def score(prefix: str) -> str:
            return f"ppl {metrics[f'{prefix}/ppl']:,.2f} (loss {metrics[f'{prefix}/loss']:.4f})"

        lines = []
        scores = [f"{name} {score(f'final_{key}')}" for key, name in SPLITS if f"final_{key}/ppl" in metrics]
        if scores:
            lines.append("final: " + ", ".join(scores))
        sliding = [
            f"{name} ppl {metrics[f'final_{key}_sliding/ppl']:,.2f}"
            for key, name in SPLITS
            if f"final_{key}_sliding/ppl" in metrics
        ]
        if sliding:
            stride = metrics.get("final_val_sliding/stride", metrics.get("final_test_sliding/stride"))
            lines.append(f"sliding window (stride {stride}): " + ", ".join(sliding))
        if "val_before/ppl" in metrics and "final_val/ppl" in metrics:
            before, after = metrics["val_before/ppl"], metrics["final_val/ppl"]
            lines.append(f"fine-tune: validation ppl {before:,.2f} -> {after:,.2f}")
        best = metrics.get("best_val_loss")
        if isinstance(best, float) and math.isfinite(best):
            lines.append(f"best validation loss {best:.4f} at step {metrics.get('best_step', '?')}")
        if "tokens" in metrics and "train_seconds" in metrics:
            lines.append(
                f"{metrics['tokens']:,} tokens in {format_duration(metrics['train_seconds'])} of training, "
                f"{metrics.get('tokens_per_sec', 0):,.0f} tokens/s"
            )
        if metrics.get("skipped_steps"):
            lines.append(f"{metrics['skipped_steps']} steps skipped as non-finite")
        lines.append(f"every figure: {Path(self._run.get('run_dir', 'RUN_DIR')) / 'summary.json'}")
        return lines

    def next_commands(self, status: str) -> list[str]:
        run_dir = self._run.get("run_dir", "RUN_DIR")
        if status == "diverged":  # resuming as is would meet the same step again
            return [f"python run.py --resume={run_dir} --skip_nonfinite=true"]
        if status != "finished":
            return [f"python run.py --resume={run_dir}"]
        if self._config.get("lora", {}).get("rank"):
            sample = (
                f"python -m minigpt.sample --checkpoint {self._config['init_from']} "
                f'--adapter {run_dir}/adapter --prompt "The history of"'
            )
        else:
            sample = f'python -m minigpt.sample --checkpoint {run_dir} --prompt "The history of"'
        return [
            sample,
            f"python -m minigpt.export {run_dir} --out {run_dir}/hf",
            f"python -m analysis.report {run_dir} --out reports/{Path(run_dir).name}",
        ]

    def finish(self, status: str = "finished") -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if not self._run:
            return
        done = status == "finished"
        where = f"{status}: run directory {self._run.get('run_dir')}"
        self.console.print(where, soft_wrap=True, markup=False)
        self.console.print("next:" if done else "continue it with:")
        for command in self.next_commands(status):
            self.console.print(f"  {command}", soft_wrap=True, highlight=False, markup=False)
