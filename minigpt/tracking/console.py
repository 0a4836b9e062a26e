"""The console: where the run is and how it is set up, a progress bar with an ETA on the Trainer's clock,
the final figures in a few lines, and the commands that come next."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from minigpt.tracking.logger import Logger


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

    def __init__(self, adapter_base: str = "") -> None:
        """``adapter_base``: for a LoRA run, the weights its adapter adapts (``init_from``), which sampling
        the result needs."""
        from rich.console import Console

        self.console = Console(stderr=True)
        self.adapter_base = adapter_base
        self._progress = None
        self._task = None
        self._run: dict[str, Any] = {}
        self._total_steps = 0
        self._clock: tuple[float, int] | None = None
        self._warned_long = False
        self._forecast_done = False

    def start(self, config: dict[str, Any], total_steps: int, first_step: int = 0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._run = config.get("_run", {})
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

    def _pace(self, step: int, train_seconds: float) -> float | None:
        """Seconds per step between the first logged step and this one, on the Trainer's clock (training
        seconds: evaluation excluded, time before a resume included); None until two logged steps are seen."""
        if self._clock is None:
            self._clock = (train_seconds, step)
            return None
        started, first = self._clock
        if step <= first:
            return None
        return (train_seconds - started) / (step - first)

    def _budget_left(self, train_seconds: float) -> float | None:
        """Seconds of the time budget left on the clock that decides when training stops; None without one."""
        budget = self._run.get("max_minutes") or 0
        return max(0.0, budget * 60 - train_seconds) if budget else None

    def eta_seconds(self, step: int, train_seconds: float) -> float | None:
        """Seconds left at the pace so far, capped by the time budget; None until the pace is known."""
        seconds_per_step = self._pace(step, train_seconds)
        if seconds_per_step is None:
            return None
        left = (self._total_steps - step) * seconds_per_step
        budget_left = self._budget_left(train_seconds)
        return left if budget_left is None else min(left, budget_left)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._progress is None:
            return
        stats = []
        if "train/loss" in metrics:
            stats.append(f"loss {metrics['train/loss']:.3f}")
            stats.append(f"ppl {math.exp(min(metrics['train/loss'], 50)):.1f}")
        if "perf/tokens_per_sec" in metrics:
            stats.append(f"{metrics['perf/tokens_per_sec']:,.0f} tok/s")
        seconds = metrics.get("train/seconds")
        eta = self.eta_seconds(step, seconds) if seconds is not None else None
        if eta is not None:
            stats.append(f"eta {format_duration(eta)}")
            self._forecast_budget(step, seconds)
            self._warn_if_long(eta)
        if "val/loss" in metrics:
            stats.append(f"val {metrics['val/loss']:.3f}")
            self.console.print(
                f"step {step}: val loss {metrics['val/loss']:.4f}, ppl {metrics.get('val/ppl', math.nan):.2f}"
            )
        elif not self.console.is_terminal and "train/loss" in metrics:
            self.console.print(f"step {step}: " + ", ".join(stats))
        self._progress.update(self._task, completed=step, **({"stats": " | ".join(stats)} if stats else {}))

    def _forecast_budget(self, step: int, train_seconds: float) -> None:
        """Under a time budget the tokens a run will see depend on the machine, so once the pace is known,
        say where the budget will end."""
        budget_left = self._budget_left(train_seconds)
        if self._forecast_done or budget_left is None:
            return
        started, first = self._clock
        seconds_per_step = (train_seconds - started) / (step - first)
        if seconds_per_step <= 0:
            return
        self._forecast_done = True
        last_step = min(self._total_steps, step + int(budget_left / seconds_per_step))
        if last_step >= self._total_steps:
            return
        budget = self._run["max_minutes"]
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
        if self.adapter_base:
            sample = (
                f"python -m minigpt.sample --checkpoint {self.adapter_base} "
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
