"""Runs as data: config, summary and metric history from local run directories or from the W&B API.

A run directory is what ``minigpt.tracking.RunDirLogger`` writes: ``config.json`` (the resolved config with
a ``_run`` block), ``summary.json`` (``status`` and final metrics) and ``metrics.jsonl`` (one object per
logged step, each with ``train/tokens``). A local sweep adds ``sweep.json`` beside its run directories.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minigpt.config import flatten, non_variant_keys
from minigpt.tracking import read_metrics


class RunsError(ValueError):
    """Runs that cannot be analysed as asked; the message says which and what to do."""


@dataclass
class Run:
    name: str
    config: dict[str, Any]
    """Flattened to dotted keys: ``model.n_head``, ``train.lr``, ``_run.device``..."""
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per logged step, each with ``step`` (and ``train/tokens`` from current runs)."""

    @property
    def status(self) -> str:
        return self.summary.get("status", "not started")

    @property
    def seed(self) -> Any:
        return self.config.get("train.seed")

    @property
    def token_budget(self) -> int:
        """Training tokens the run was configured for: steps x sequences per step x context."""
        c = self.config
        return int(c["train.max_steps"]) * int(c["train.batch_size"]) * int(c["model.block_size"])

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """``(tokens seen, value)`` for every logged row that has ``key``; rows from runs logged before
        ``train/tokens`` existed count tokens from the step."""
        per_step = int(self.config["train.batch_size"]) * int(self.config["model.block_size"])
        points = [
            (float(h.get("train/tokens", h["step"] * per_step)), float(h[key]))
            for h in self.history
            if key in h and isinstance(h[key], int | float)
        ]
        return [p[0] for p in points], [p[1] for p in points]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise RunsError(f"{path} is not valid JSON ({e}); delete or repair that run directory") from e


def is_minigpt_config(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` is a MiniGPT run's, not another tool's that sits below a run folder (the
    Hugging Face export a run writes into ``<run>/hf`` with ``log.export_hf`` has one too)."""
    return isinstance(config.get("model"), dict) and isinstance(config.get("train"), dict)


def load_run_dir(path: str | Path, config: dict[str, Any] | None = None) -> Run:
    """One run directory (``config``: its ``config.json``, when already read); a run killed before its
    summary or first metric loads with what it has."""
    path = Path(path)
    config = _read_json(path / "config.json") if config is None else config
    summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    metrics_path = path / "metrics.jsonl"
    history = read_metrics(metrics_path) if metrics_path.is_file() else []
    return Run(path.name, flatten(config), summary, history)


def load_runs(roots: Iterable[str | Path]) -> list[Run]:
    """Every run directory (a folder with ``config.json``) at or below each root, sorted by name."""
    runs = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise RunsError(f"no such run folder: {root}")
        for config_path in sorted(root.glob("**/config.json")):
            if "wandb" in config_path.parts:
                continue
            config = _read_json(config_path)
            if is_minigpt_config(config):
                runs.append(load_run_dir(config_path.parent, config))
    if not runs:
        raise RunsError(f"no run directories (folders with config.json) under {', '.join(map(str, roots))}")
    return sorted(runs, key=lambda r: r.name)


def load_sweep_state(root: str | Path) -> dict[str, Any] | None:
    """The ``sweep.json`` a local sweep keeps in its folder, or None when ``root`` has none."""
    path = Path(root) / "sweep.json"
    return json.loads(path.read_text()) if path.is_file() else None


# What may follow ``entity/project/`` in ``--wandb``, and the W&B API filter each selects runs with; the
# first two are the paths of W&B's own sweep and group pages, so a page's address can be pasted as it is.
WANDB_SELECTORS = {
    "sweeps": lambda value: {"sweep": value},
    "groups": lambda value: {"group": value},
    "tags": lambda value: {"tags": {"$in": [value]}},
}


def wandb_selection(source: str) -> tuple[str, dict[str, Any]]:
    """``(entity/project, API filter)`` from ``--wandb``: ``ENTITY/PROJECT`` (every run), or that followed by
    ``/sweeps/ID``, ``/groups/NAME`` or ``/tags/NAME`` (only the runs of one sweep, group or tag); a
    ``https://wandb.ai/`` prefix is accepted."""
    parts = source.removeprefix("https://").removeprefix("wandb.ai/").strip("/").split("/")
    if len(parts) == 2 and all(parts):
        return "/".join(parts), {}
    if len(parts) == 4 and all(parts) and parts[2] in WANDB_SELECTORS:
        return "/".join(parts[:2]), WANDB_SELECTORS[parts[2]](parts[3])
    raise RunsError(
        f"--wandb {source!r}: give ENTITY/PROJECT, or ENTITY/PROJECT/sweeps/ID, ENTITY/PROJECT/groups/NAME "
        "or ENTITY/PROJECT/tags/NAME to read only one sweep, group or tag"
    )


def load_wandb_runs(source: str) -> list[Run]:
    """Runs of a W&B project through the public API, all of them or those ``source`` selects (see
    ``wandb_selection``); needs a login and a network."""
    import wandb

    project, filters = wandb_selection(source)
    runs = []
    for remote in wandb.Api().runs(project, filters=filters):
        summary = {k: v for k, v in remote.summary.items() if not k.startswith("_")}
        summary["status"] = "finished" if remote.state == "finished" else remote.state
        history = [dict(row, step=row["_step"]) for row in remote.scan_history()]
        runs.append(Run(remote.name, flatten(dict(remote.config)), summary, history))
    return runs


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> dict[tuple, list[Run]]:
    """Runs grouped by their values of ``keys`` (dotted config keys), groups in order of first appearance."""
    for key in keys:
        missing = [r.name for r in runs if key not in r.config]
        if missing:
            raise RunsError(
                f"config key {key} (from --group-by) is missing from runs {', '.join(missing[:3])}; "
                "check the spelling (dotted, e.g. model.n_head)"
            )
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.config[k] for k in keys), []).append(run)
    return groups


NOT_VARIANT_KEYS = non_variant_keys()
"""Config keys that may differ between runs of one variant (the config's roles say which): the seed, what the
statistics are over, and how a run was carried out and recorded."""
NOT_VARIANT_PREFIXES = ("_run.",)
"""How the run went (device, commit, command): facts about one run, never part of its variant."""


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """The config keys whose values differ between runs, seeds and bookkeeping (names, folders) left out:
    what defines a variant when ``--group-by`` is not given."""
    keys = sorted({k for r in runs for k in r.config})
    return [
        k
        for k in keys
        if k not in NOT_VARIANT_KEYS
        and not k.startswith(NOT_VARIANT_PREFIXES)
        and len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1
    ]
