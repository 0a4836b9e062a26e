"""Runs as data: config, summary and metric history from local run directories or from the W&B API.

A run directory is what ``minigpt.tracking.RunDirLogger`` writes: ``config.json`` (the resolved config with
a ``_run`` block), ``summary.json`` (``status`` and final metrics) and ``metrics.jsonl`` (one object per
logged step).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minigpt.config import flatten


@dataclass
class Run:
    name: str
    config: dict[str, Any]
    """Flattened to dotted keys: ``model.n_head``, ``train.lr``, ``_run.device``..."""
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per logged step, each with ``step``."""

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")

    @property
    def tokens_per_step(self) -> int:
        return int(self.config["train.batch_size"]) * int(self.config["model.block_size"])

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """``(tokens seen, value)`` for every logged step that has ``key``."""
        points = [(h["step"] * self.tokens_per_step, float(h[key])) for h in self.history if key in h]
        return [p[0] for p in points], [p[1] for p in points]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (a run killed mid-write) is dropped."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def load_run_dir(path: str | Path) -> Run:
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"status": "unknown"}
    return Run(path.name, flatten(config), summary, read_jsonl(path / "metrics.jsonl"))


def load_runs(roots: Iterable[str | Path]) -> list[Run]:
    """Every run directory (a folder with ``config.json``) at or below each root, sorted by name."""
    runs = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"no such run folder: {root}")
        for config_path in sorted(root.glob("**/config.json")):
            if "wandb" not in config_path.parts:
                runs.append(load_run_dir(config_path.parent))
    return sorted(runs, key=lambda r: r.name)


def load_wandb_runs(project: str, filters: dict[str, Any] | None = None) -> list[Run]:
    """Runs of a W&B project (``entity/project``) through the public API; needs a login and a network."""
    import wandb

    runs = []
    for remote in wandb.Api().runs(project, filters=filters or {}):
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
            raise KeyError(f"config key {key} is missing from runs {', '.join(missing[:3])}")
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.config[k] for k in keys), []).append(run)
    return groups


@dataclass
class Variant:
    """One group of runs that differ only in seed, with a label and a colour used by every plot."""

    values: dict[str, Any]
    runs: list[Run]
    label: str = ""
    colour: str = ""


PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
)
PALETTE += ("tab:olive", "tab:cyan")


def make_variants(runs: Sequence[Run], keys: Sequence[str]) -> list[Variant]:
    """Group ``runs`` by ``keys``, groups sorted by their values; label each group by the keys whose values
    differ between groups."""
    groups = dict(sorted(group_runs(runs, keys).items(), key=lambda g: [(type(x).__name__, x) for x in g[0]]))
    varying = [i for i, k in enumerate(keys) if len({g[i] for g in groups}) > 1] or list(range(len(keys)))
    variants = []
    for n, (values, members) in enumerate(groups.items()):
        label = ", ".join(f"{keys[i].rsplit('.', 1)[-1]}={values[i]}" for i in varying)
        colour = PALETTE[n % len(PALETTE)]
        variants.append(Variant(dict(zip(keys, values, strict=True)), list(members), label, colour))
    return variants
