"""Where metrics go. The training loop talks to ``Logger`` (``logger.py``); one module per destination knows
the rest:

- ``rundir.py``: the local run directory (always on): ``config.json``, line-buffered ``metrics.jsonl``,
  ``summary.json``. It is the record that analysis reads and that survives with no network at all.
- ``wandb.py``: Weights & Biases, never blocking on a login or a network: online when the user can use W&B
  (``wandb_mode``), falling back to offline when the server does not answer; artifacts both ways.
- ``console.py``: where the run is and how it is set up, a progress bar with an ETA, the final figures in a
  few lines, and the commands that come next.

``build_logger`` assembles the loggers of one run.
"""

from __future__ import annotations

from pathlib import Path

from minigpt.config import ExperimentConfig
from minigpt.tracking.console import ConsoleLogger, format_duration
from minigpt.tracking.logger import EXIT_CODES, Logger, MultiLogger, say
from minigpt.tracking.rundir import RunDirLogger, new_run_dir, read_metrics
from minigpt.tracking.wandb import (
    RUN_SPECIFIC_KEYS,
    WandbLogger,
    can_connect,
    fetch_artifact,
    is_artifact_reference,
    log_artifact_run,
    variant_group,
    wandb_mode,
)

__all__ = [
    "EXIT_CODES",
    "RUN_SPECIFIC_KEYS",
    "ConsoleLogger",
    "Logger",
    "MultiLogger",
    "RunDirLogger",
    "WandbLogger",
    "build_logger",
    "can_connect",
    "fetch_artifact",
    "format_duration",
    "is_artifact_reference",
    "log_artifact_run",
    "new_run_dir",
    "read_metrics",
    "say",
    "variant_group",
    "wandb_mode",
]


def build_logger(
    config: ExperimentConfig, run_dir: Path, resume_id: str | None = None, first_step: int = 0
) -> Logger:
    """The loggers of one run, each given the settings it needs from the run's typed config: the run
    directory, the console and, unless ``log.wandb`` is disabled, W&B with its mode, group, job type and
    tags. ``start`` then hands every logger the run's record (the resolved config and its ``_run``
    metadata)."""
    log = config.log
    console = ConsoleLogger(adapter_base=config.init_from if config.lora.rank else "")
    loggers: list[Logger] = [RunDirLogger(run_dir), console]
    mode = wandb_mode(log.wandb)
    if mode != "disabled":
        tags = [t.strip() for t in log.tags.split(",") if t.strip()]
        if log.sweep and log.sweep not in tags:
            tags.append(log.sweep)
        loggers.append(
            WandbLogger(
                mode,
                log.project,
                run_dir,
                run_dir.name,
                group=log.group or variant_group(config.to_dict()),
                tags=tuple(tags),
                notes=log.notes,
                resume_id=resume_id,
                job_type="finetune" if config.init_from else "train",
                first_step=first_step,
                rewind=log.wandb_rewind,
                uses=config.init_from if is_artifact_reference(config.init_from) else "",
            )
        )
    return MultiLogger(loggers)
