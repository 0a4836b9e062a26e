"""The interface the training loop talks to (``Logger``), several loggers as one (``MultiLogger``), and the
exit code each way a run can end."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any


class Logger:
    """What the training loop may do with metrics. Every method is optional for a backend."""

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        """Called once before the first step with the resolved config (and run metadata)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record metrics at an optimizer step."""

    def sample(self, prompt: str, text: str, tokens: int, step: int) -> None:
        """Record the model's continuation ``text`` of ``prompt`` after ``tokens`` tokens seen (``step``)."""

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

    def sample(self, prompt: str, text: str, tokens: int, step: int) -> None:
        for logger in self.loggers:
            logger.sample(prompt, text, tokens, step)

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


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def say(line: str) -> None:
    """A line for the person watching the run. It goes to stderr, as the console logger's lines do, so a run
    writes to one stream and stdout stays free for what a command outputs (generated text, a report path)."""
    print(line, file=sys.stderr, flush=True)
