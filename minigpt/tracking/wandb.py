"""Weights & Biases, never blocking on a login or a network: the mode a run gets (``wandb_mode``), the
connection probe, the variant's group, artifacts to and from W&B, and ``WandbLogger``, online when the user
can use W&B and falling back to offline when the server does not answer."""

from __future__ import annotations

import contextlib
import hashlib
import json
import netrc
import os
import re
import socket
import threading
import urllib.parse
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from minigpt.config import ConfigError, flatten, non_variant_keys
from minigpt.errors import first_line
from minigpt.tracking.logger import EXIT_CODES, Logger, jsonable, say

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
        self._samples = None  # the wandb.Table of periodic samples, made with the first

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
            self._go_offline(f"{type(e).__name__}: {first_line(e)}")
            # wandb's service still holds the run id of the failed start; a resume needs that id again.
            with contextlib.suppress(Exception):
                wandb.teardown()
            self._run = wandb.init(**self._init_kwargs(config, directory))
        self._define_metrics()
        if self.uses and self.mode == "online":
            self._use_artifact(self.uses.removeprefix(ARTIFACT_SCHEME))
        if self.resume_id and self.first_step and not self._rewinds:
            say(
                f"W&B resume: this part logs the steps after {self.first_step} into run {self.resume_id}. "
                "W&B keeps a step it already has and drops it if logged again, so steps between the "
                "checkpoint and the interruption show their first values there; metrics.jsonl in the run "
                "directory holds the resumed ones"
                + ("" if self.mode == "offline" else " (--wandb_rewind=true replaces them in W&B too)")
            )
        if self.mode == "offline":
            say(f"W&B is offline; upload this run later with: {self.sync_command}")
        if self.mode == "online" and self._run is not None:
            say(self.location)  # a long run's dashboard is worth having from its first step

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

    def sample(self, prompt: str, text: str, tokens: int, step: int) -> None:
        """One row more in the run's ``samples`` table (step, tokens seen, prompt, text), logged incrementally
        so each evaluation adds its row instead of re-uploading the table."""
        if self._run is None:
            return
        import wandb

        def log_row() -> None:
            if self._samples is None:
                columns = ["step", "tokens", "prompt", "text"]
                self._samples = wandb.Table(columns=columns, log_mode="INCREMENTAL")
            self._samples.add_data(step, tokens, prompt, text)
            self._run.log({"samples": self._samples}, step=step)

        self._guarded(log_row)

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
            clean = {k: jsonable(v) for k, v in (metadata or {}).items()}
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
        say(where)

    @property
    def run_id(self) -> str | None:
        return self._run.id if self._run is not None else self.resume_id
