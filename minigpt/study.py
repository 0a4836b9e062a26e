"""Run an ablation study: each variant at its own best learning rate, then paired seeds, then the report.

    python -m minigpt.study sweeps/studies/cpu.yaml [--parallel N] [--threads T] [--out-dir runs/studies]
        [--dry-run] [--report-out DIR [--records DIR]]

A sweep runs a grid; a study runs the protocol a reviewer expects of an ablation:

1. **Learning rate per variant.** Every variant without ``lr_from`` is trained at each value of its grid
   (its own ``lr_grid``, else the study's), pruned by successive halving: the rungs (default 1/9, 1/3 and
   the whole budget) train for that fraction of the steps (warmup scaled alike), and after each rung the
   best ``keep`` fraction of the rates (by mean ``select_metric`` over the rung's seeds: by default the
   run's own final validation estimate; with ``whole_val/loss`` each run's final checkpoint is first scored
   on the whole validation split) goes on. Every rung but the last uses the first selection seed; the last
   uses every selection seed. A rung may repeat the whole budget (``rungs: [1.0, 1.0]``: every rate on one
   seed, then the best ``keep`` of them on all, the first seed's runs reused). When the winner sits at an
   edge of the grid, the grid grows by one step that way (up to ``max_extend`` times, each new rate with
   every selection seed) until an inner value wins.
2. **Seeds.** Each variant at its chosen rate (or, with ``lr_from``, at another variant's; with ``lr``, at a
   rate fixed in advance), for every one of
   ``seeds`` (or the variant's own ``seeds``, when some comparisons can afford more than others): runs with
   the same seed see the same batches, so comparisons are paired over the seeds both sides ran. Phase-1 runs
   at the chosen rate and whole budget count as seeds already.
   With ``test_metric: whole_<split>/loss`` each seed run's final checkpoint is then scored on that whole
   split (``python -m minigpt.evaluate``), with a bootstrap interval over blocks, into its summary.
3. **Report.** ``--report-out`` writes the tests each question asks for with ``analysis.study_report``.

Re-running the command continues where it stopped: a run whose ``summary.json`` says ``finished`` or
``diverged`` is never repeated, a run stopped part-way continues from its last checkpoint, and the choices are
recomputed from the records, so they come out the same. ``study.json`` in the study's folder records the plan,
every run (with its load average at start and end and its CPU time, kept for the runs that ended when a stop
cuts a batch short) and each variant's chosen rate; the run directories are ``<out-dir>/<study>/runs/<run>/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from minigpt import checkpoint, perf
from minigpt.config import ConfigError, ExperimentConfig, apply_overrides, load_experiment
from minigpt.storage import atomic_write_json
from minigpt.sweep import OUTCOMES, PlannedRun, SweepRunner, load_average, recorded_runs

QUESTION_KINDS = ("difference", "equivalence", "success")
STUDY_KEYS = {
    "name": "the study's name: its folder under --out-dir",
    "base": "the experiment file every run starts from",
    "overrides": "config overrides for every run (the budget: train.max_steps, batch size, ...)",
    "lr_grid": "learning rates tried for every variant without lr_from, lr or a grid of its own",
    "rungs": "fractions of the budget for successive halving, ending at 1",
    "keep": "fraction of the rates kept after each rung",
    "max_extend": "how often the grid may grow past an edge",
    "selection_seeds": "seeds of phase 1 (the learning-rate choice)",
    "seeds": "seeds of phase 2, for every variant without seeds of its own",
    "select_metric": "what phase 1 minimises (whole_val/loss: validation scored whole after training)",
    "test_metric": "what the report tests (whole_<split>/loss: that split scored whole after training)",
    "variants": "list of {label, overrides, one of lr_from, lr_grid or lr, seeds}",
    "questions": "list of {name, title, kind, baseline, variants, margin, rule}",
}
VARIANT_KEYS = ("label", "overrides", "lr_from", "lr_grid", "lr", "seeds")
QUESTION_KEYS = ("name", "title", "kind", "baseline", "variants", "margin", "rule")
RULE_KEYS = ("metric", "below", "below_unigram_by")
DEFAULT_RUNGS = (1 / 9, 1 / 3, 1.0)
RUN_SCRIPT = Path(__file__).resolve().parent.parent / "run.py"
ASSUMED_OVERHEAD_S = 25.0
"""Start-up and final evaluation of one run, until finished runs of the study give a measured figure."""


class StudyError(ValueError):
    """A study file or option that cannot be used; the message names the line."""


@dataclass
class Variant:
    label: str
    overrides: dict[str, Any]
    lr_from: str | None = None
    lr_grid: list[float] | None = None
    """The variant's own grid instead of the study's (a variant whose best rate lies elsewhere)."""
    lr: float | None = None
    """A rate fixed in advance instead of a choice: a variant at a rate the protocol would not pick (a lower
    one, say, to ask whether it trains more reliably there)."""
    seeds: list[int] | None = None
    """The variant's own phase-2 seeds instead of the study's (a comparison that can afford more or fewer)."""

    @property
    def chooses_rate(self) -> bool:
        """Whether phase 1 chooses this variant's rate from a grid."""
        return self.lr_from is None and self.lr is None

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "-", self.label).strip("-").lower()


@dataclass
class Question:
    name: str
    title: str
    kind: str
    baseline: str
    variants: list[str]
    margin: float | None = None
    """Equivalence margin as a perplexity ratio (0.02: within 2%)."""
    rule: dict[str, Any] | None = None
    """Success rule: ``metric`` below ``below``, or below the unigram loss minus ``below_unigram_by``."""


@dataclass
class Study:
    path: Path
    name: str
    base: str
    overrides: dict[str, Any]
    lr_grid: list[float]
    variants: list[Variant]
    questions: list[Question]
    rungs: list[float] = field(default_factory=lambda: list(DEFAULT_RUNGS))
    keep: float = 1 / 3
    max_extend: int = 2
    selection_seeds: list[int] = field(default_factory=lambda: [1, 2])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    select_metric: str = "final_val/loss"
    test_metric: str = "final_test/loss"

    def variant(self, label: str) -> Variant:
        return next(v for v in self.variants if v.label == label)

    def seeds_of(self, variant: Variant) -> list[int]:
        """The seeds phase 2 runs the variant with."""
        return list(variant.seeds or self.seeds)

    def grid_of(self, variant: Variant) -> list[float]:
        """The rates phase 1 starts from for a variant that chooses its own."""
        return list(variant.lr_grid or self.lr_grid)

    _configs: dict[str, ExperimentConfig] = field(default_factory=dict, repr=False, compare=False)

    def config_of(self, variant: Variant) -> ExperimentConfig:
        """The variant's resolved config (the base file is executed once per variant, not per run)."""
        if variant.label not in self._configs:
            overrides = {**self.overrides, **variant.overrides}
            self._configs[variant.label] = apply_overrides(load_experiment(self.base), overrides)
        return self._configs[variant.label]


# ------------------------------------------------------------------------------------------ the study file


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping_lines(node: yaml.Node) -> dict[str, int]:
    """Key -> line of a YAML mapping node, so errors can point at the line."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: _line(k) for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _check_keys(path: Path, where: str, values: dict, allowed, lines: dict[str, int], node_line: int) -> None:
    for key in values:
        if key not in allowed:
            raise StudyError(
                f"{path}:{lines.get(key, node_line)}: unknown key {key!r} in {where}; "
                f"valid keys: {', '.join(allowed)}"
            )


def load_study(path: str | Path) -> Study:
    """Read and check a study file: every mistake is a ``StudyError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist")
    text = path.read_text()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise StudyError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise StudyError(f"{path}: a study file is a mapping (name, base, variants, questions, ...)")
    lines = _mapping_lines(root)
    _check_keys(path, "the study", spec, STUDY_KEYS, lines, 1)
    for key in ("name", "base", "variants", "questions"):
        if key not in spec:
            raise StudyError(f"{path}: missing {key!r} ({STUDY_KEYS[key]})")
    value_nodes = {k.value: v for k, v in root.value}

    def where(key: str) -> str:
        return f"{path}:{lines.get(key, 1)}"

    variants = _load_variants(path, spec["variants"], value_nodes["variants"])
    labels = [v.label for v in variants]
    study = Study(
        path=path,
        name=str(spec["name"]),
        base=str(spec["base"]),
        overrides=dict(spec.get("overrides") or {}),
        lr_grid=_learning_rates(where("lr_grid"), spec.get("lr_grid", [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3])),
        variants=variants,
        questions=_load_questions(path, spec["questions"], value_nodes["questions"], labels),
        rungs=[float(x) for x in spec.get("rungs", DEFAULT_RUNGS)],
        keep=float(spec.get("keep", 1 / 3)),
        max_extend=int(spec.get("max_extend", 2)),
        selection_seeds=[int(s) for s in spec.get("selection_seeds", [1, 2])],
        seeds=_seed_list(where("seeds"), spec.get("seeds", [1, 2, 3, 4, 5])),
        select_metric=str(spec.get("select_metric", "final_val/loss")),
        test_metric=str(spec.get("test_metric", "final_test/loss")),
    )
    if not study.rungs or study.rungs[-1] != 1.0 or any(not 0 < r <= 1 for r in study.rungs):
        raise StudyError(f"{where('rungs')}: rungs are fractions in (0, 1] that end at 1, got {study.rungs}")
    if study.rungs != sorted(study.rungs):
        raise StudyError(f"{where('rungs')}: rungs must not decrease, got {study.rungs}")
    if not 0 < study.keep <= 1:
        raise StudyError(f"{where('keep')}: keep is a fraction in (0, 1], got {study.keep}")
    if not study.selection_seeds:
        raise StudyError(f"{where('selection_seeds')}: phase 1 needs at least one seed")
    if whole_split(study.select_metric) not in (None, "val"):
        raise StudyError(
            f"{where('select_metric')}: the rate is chosen on validation, so a whole split to select on is "
            f"whole_val/loss, got {study.select_metric}"
        )
    variant_lines = {v.label: _line(n) for v, n in zip(variants, value_nodes["variants"].value, strict=True)}
    for q in study.questions:
        if q.kind not in ("difference", "equivalence"):
            continue
        baseline = set(study.seeds_of(study.variant(q.baseline)))
        for label in q.variants:
            shared = sorted(baseline & set(study.seeds_of(study.variant(label))))
            if len(shared) < 2:
                # the line to fix: a variant's own seeds where one side has them, else the study's
                own = next((x for x in (label, q.baseline) if study.variant(x).seeds is not None), None)
                line = f"{path}:{variant_lines[own]}" if own else where("seeds")
                raise StudyError(
                    f"{line}: question {q.name!r} is a paired test and needs at least two seeds "
                    f"that {label!r} shares with {q.baseline!r}, got {shared}"
                )
    try:
        base = load_experiment(study.base)
        apply_overrides(base, study.overrides)
    except ConfigError as e:
        raise StudyError(f"{where('base')}: {e}") from None
    for variant in variants:
        try:
            study.config_of(variant)
        except ConfigError as e:
            line = variant_lines[variant.label]
            raise StudyError(f"{path}:{line}: variant {variant.label!r}: {e}") from None
    return study


def _learning_rates(where: str, grid: Any) -> list[float]:
    """A learning-rate grid, the study's or a variant's: at least two positive numbers (YAML's ``true`` is
    not one), sorted."""
    numbers = isinstance(grid, list) and all(
        isinstance(lr, int | float) and not isinstance(lr, bool) for lr in grid
    )
    if not numbers or len(grid) < 2 or any(lr <= 0 for lr in grid):
        raise StudyError(f"{where}: lr_grid needs at least two positive learning rates, got {grid!r}")
    return sorted(float(lr) for lr in grid)


def _seed_list(where: str, seeds: Any) -> list[int]:
    """Seeds, the study's or a variant's: a non-empty list of distinct integers (YAML's ``true`` is
    not one)."""
    integers = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not integers or not seeds or len(set(seeds)) != len(seeds):
        raise StudyError(f"{where}: seeds is a list of distinct integers, got {seeds!r}")
    return list(seeds)


def _load_variants(path: Path, items: Any, node: yaml.Node) -> list[Variant]:
    if not isinstance(items, list) or not items:
        raise StudyError(f"{path}:{_line(node)}: variants is a non-empty list of {{label, overrides}}")
    variants: list[Variant] = []
    for item, item_node in zip(items, node.value, strict=True):
        line = _line(item_node)
        if not isinstance(item, dict) or "label" not in item:
            raise StudyError(f"{path}:{line}: a variant is a mapping with a label (and overrides)")
        _check_keys(path, f"variant {item['label']!r}", item, VARIANT_KEYS, _mapping_lines(item_node), line)
        overrides = item.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise StudyError(f"{path}:{line}: variant {item['label']!r}: overrides is a key: value mapping")
        if any(k in ("train.lr", "lr", "train.seed", "seed") for k in overrides):
            raise StudyError(
                f"{path}:{line}: variant {item['label']!r}: the study chooses lr and seed; "
                "use lr_grid, lr_from, lr and seeds instead"
            )
        if item["label"] in {v.label for v in variants}:
            raise StudyError(f"{path}:{line}: two variants are labelled {item['label']!r}")
        given = [key for key in ("lr_from", "lr_grid", "lr") if item.get(key) is not None]
        if len(given) > 1:
            raise StudyError(
                f"{path}:{line}: variant {item['label']!r}: {' and '.join(given)} exclude each other (a "
                "variant takes another's rate, chooses its own from its grid, or has one fixed in advance)"
            )
        grid = item.get("lr_grid")
        if grid is not None:
            grid = _learning_rates(f"{path}:{line}: variant {item['label']!r}", grid)
        lr = item.get("lr")
        if lr is not None:
            if isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0:
                raise StudyError(
                    f"{path}:{line}: variant {item['label']!r}: lr is one positive number, got {lr!r}"
                )
            lr = float(lr)
        seeds = item.get("seeds")
        if seeds is not None:
            seeds = _seed_list(f"{path}:{line}: variant {item['label']!r}", seeds)
        variants.append(Variant(str(item["label"]), dict(overrides), item.get("lr_from"), grid, lr, seeds))
    labels = {v.label for v in variants}
    for variant, item_node in zip(variants, node.value, strict=True):
        if variant.lr_from is None:
            continue
        source = next((v for v in variants if v.label == variant.lr_from), None)
        if source is None or not source.chooses_rate:
            raise StudyError(
                f"{path}:{_line(item_node)}: variant {variant.label!r}: lr_from must name a variant that "
                f"chooses its own rate (one of {', '.join(sorted(labels - {variant.label}))}), "
                f"got {variant.lr_from!r}"
            )
    return variants


def _load_questions(path: Path, items: Any, node: yaml.Node, labels: list[str]) -> list[Question]:
    if not isinstance(items, list) or not items:
        raise StudyError(f"{path}:{_line(node)}: questions is a non-empty list")
    questions = []
    for item, item_node in zip(items, node.value, strict=True):
        line = _line(item_node)
        if not isinstance(item, dict):
            raise StudyError(f"{path}:{line}: a question is a mapping (name, kind, baseline, variants)")
        _check_keys(path, "a question", item, QUESTION_KEYS, _mapping_lines(item_node), line)
        name = str(item.get("name", ""))
        kind = item.get("kind")
        if not name or kind not in QUESTION_KINDS:
            raise StudyError(
                f"{path}:{line}: a question needs a name and a kind ({', '.join(QUESTION_KINDS)})"
            )
        if "margin" in item and kind != "equivalence":
            raise StudyError(
                f"{path}:{line}: question {name!r}: a margin needs kind: equivalence, not {kind}"
            )
        if kind == "equivalence" and not (isinstance(item.get("margin"), int | float) and item["margin"] > 0):
            raise StudyError(
                f"{path}:{line}: question {name!r}: an equivalence test needs its margin fixed in the file "
                "(e.g. margin: 0.02 for +-2% in perplexity)"
            )
        rule = item.get("rule")
        if kind == "success":
            if not isinstance(rule, dict) or not (set(rule) & {"below", "below_unigram_by"}):
                raise StudyError(
                    f"{path}:{line}: question {name!r}: a success question needs a rule, e.g. "
                    "rule: {metric: final_val/loss, below_unigram_by: 0.5}"
                )
            _check_keys(path, f"the rule of {name!r}", rule, RULE_KEYS, {}, line)
        elif rule is not None:
            raise StudyError(f"{path}:{line}: question {name!r}: a rule needs kind: success, not {kind}")
        named = [item.get("baseline"), *(item.get("variants") or [])]
        unknown = [label for label in named if label not in labels]
        if unknown or not item.get("variants"):
            raise StudyError(
                f"{path}:{line}: question {name!r}: baseline and variants must name variants "
                f"({', '.join(labels)}); unknown: {', '.join(map(str, unknown)) or 'no variants given'}"
            )
        questions.append(
            Question(
                name,
                str(item.get("title", name)),
                kind,
                item["baseline"],
                list(item["variants"]),
                item.get("margin"),
                rule,
            )
        )
    return questions


# ---------------------------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class RunSpec:
    variant: str
    lr: float
    seed: int
    steps: int
    phase: str

    def name(self, study: Study) -> str:
        return f"{study.variant(self.variant).slug}_lr-{self.lr:.4g}_seed-{self.seed}_steps-{self.steps}"


RUN_NAME = re.compile(r"(?P<slug>.+)_lr-(?P<lr>[0-9.e+-]+)_seed-(?P<seed>\d+)_steps-(?P<steps>\d+)")


def spec_from_name(study: Study, name: str) -> RunSpec:
    """The run a name stands for (how a W&B agent, given only the name, knows what to train)."""
    match = RUN_NAME.fullmatch(name)
    variant = next((v for v in study.variants if match and v.slug == match["slug"]), None)
    if match is None or variant is None:
        slugs = ", ".join(v.slug for v in study.variants)
        raise StudyError(f"{name!r} is not a run of study {study.name} (its variants: {slugs})")
    return RunSpec(variant.label, float(match["lr"]), int(match["seed"]), int(match["steps"]), "agent")


def budget(study: Study, variant: Variant) -> tuple[int, int]:
    """The variant's whole budget in steps and its warmup steps."""
    train = study.config_of(variant).train
    return train.max_steps, train.warmup_steps


def tokens_per_step(study: Study, variant: Variant) -> int:
    """Training tokens of one optimizer step of ``variant``: sequences per step times context."""
    config = study.config_of(variant)
    return config.train.batch_size * config.model.block_size


def tokens_per_run(study: Study, variant: Variant) -> int:
    """Training tokens of one whole-budget run of ``variant``."""
    return budget(study, variant)[0] * tokens_per_step(study, variant)


def training_flops(study: Study, spec: RunSpec) -> float:
    """Approximate FLOPs of training ``spec`` (the model's ``flops_per_token`` times its tokens)."""
    from minigpt.model import GPT

    config = study.config_of(study.variant(spec.variant))
    with torch.device("meta"):  # the shape alone: no memory, no initialisation
        per_token = GPT(config.model).flops_per_token()
    return per_token * spec.steps * config.train.batch_size * config.model.block_size


def rung_steps(study: Study, variant: Variant, fraction: float) -> tuple[int, int]:
    steps, warmup = budget(study, variant)
    return max(1, round(steps * fraction)), round(warmup * fraction)


def command_for(study: Study, spec: RunSpec, runs_dir: Path, threads: int) -> list[str]:
    variant = study.variant(spec.variant)
    steps, warmup = budget(study, variant)
    overrides = {**study.overrides, **variant.overrides}
    overrides.update({"train.lr": spec.lr, "train.seed": spec.seed})
    if spec.steps != steps:  # a rung short of the whole budget: the schedule shrinks with it
        overrides.update(
            {"train.max_steps": spec.steps, "train.warmup_steps": round(warmup * spec.steps / steps)}
        )
    args = [f"--{k}={v}" for k, v in overrides.items()]
    args += [f"--log.out_dir={runs_dir}", f"--log.run_name={spec.name(study)}", f"--log.sweep={study.name}"]
    # W&B averages a group: the seeds of one variant at one learning rate and budget, under its study label
    group = f"{variant.label}, lr {spec.lr:g}" + ("" if spec.steps == steps else f", {spec.steps} steps")
    args.append(f"--log.group={group}")
    if threads:
        args.append(f"--train.threads={threads}")
    return [sys.executable, str(RUN_SCRIPT), study.base, *args]


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def score(study: Study, ex: Executor, specs: list[RunSpec]) -> float:
    """Mean selection metric over the runs; inf when any failed or is not finite (a diverged rate loses)."""
    values = []
    for spec in specs:
        summary = ex.summary(spec.name(study))
        value = summary.get(study.select_metric)
        if (
            summary.get("status") != "finished"
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return math.inf
        values.append(value)
    return statistics.fmean(values)


class Pending(Exception):
    """The runs of the current phase are handed to W&B agents; the message says how to go on."""


class WandbRuns:
    """Phase results read from a W&B project, and a phase's missing runs created there as a W&B sweep that
    ``wandb agent`` runs on any number of machines (each agent run calls this module with ``--run-one``)."""

    def __init__(self, project: str, study_file: Path) -> None:
        self.project, self.study_file = project, study_file

    def summaries(self, study: Study) -> dict[str, dict[str, Any]]:
        """Run name -> W&B summary (with ``status``), for the study's runs (tagged with its name)."""
        import wandb

        from analysis.runs import flatten

        found = {}
        for remote in wandb.Api().runs(self.project, filters={"tags": {"$in": [study.name]}}):
            name = flatten(dict(remote.config)).get("log.run_name")
            summary = {k: v for k, v in remote.summary.items() if not k.startswith("_")}
            found[name] = {**summary, "status": "finished" if remote.state == "finished" else remote.state}
        return found

    def create_sweep(self, study: Study, names: list[str]) -> str:
        import wandb

        entity, _, project = self.project.rpartition("/")
        config = {
            "name": f"{study.name}: {len(names)} runs",
            "method": "grid",
            "command": [
                "${env}",
                "${interpreter}",
                "-m",
                "minigpt.study",
                str(self.study_file),
                "--run-one",
                "${args}",
            ],
            "parameters": {"study.run": {"values": names}},
        }
        return wandb.sweep(config, entity=entity or None, project=project)


RUN_TIMES = ("returncode", "seconds", "load_start", "load_end", "cpu_user_s", "cpu_sys_s")
"""What ``study.json`` keeps of how each run went (the sweep runner's ``PlannedRun`` fields)."""


class Executor:
    """Runs batches of specs (here through the sweep runner, or as W&B sweeps) and keeps ``study.json`` up to
    date."""

    def __init__(
        self, study: Study, study_dir: Path, parallel: int, threads: int, wandb: WandbRuns | None = None
    ) -> None:
        self.study, self.study_dir, self.parallel, self.threads = study, study_dir, parallel, threads
        self.runs_dir = study_dir / "runs"
        self.wandb = wandb
        self.remote: dict[str, dict[str, Any]] = {}
        self.sweeps: dict[str, str] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.chosen: dict[str, float] = {}
        self.grids: dict[str, list[float]] = {}
        previous = study_dir / "study.json"
        if previous.is_file():
            with open(previous) as f:
                state = json.load(f)
            self.records = {r["name"]: r for r in state.get("runs", [])}
            self.sweeps = state.get("wandb_sweeps", {})
        if wandb is not None:
            self.remote = wandb.summaries(study)

    def summary(self, name: str) -> dict[str, Any]:
        """A run's summary: from W&B in W&B mode, else from its run directory."""
        if self.wandb is not None:
            return self.remote.get(name, {})
        return read_summary(self.runs_dir / name)

    def run_batch(self, specs: list[RunSpec]) -> None:
        """Run every spec not finished yet, ``parallel`` at a time, the costliest first; record each."""
        specs = list(dict.fromkeys(specs))
        for spec in specs:
            name = spec.name(self.study)
            record = self.records.setdefault(name, {"name": name})
            full_steps = budget(self.study, self.study.variant(spec.variant))[0]
            # A phase-1 run at the chosen rate and whole budget is also a phase-2 seed: it is recorded as
            # phase 2 ("seeds") and stays among the grid's points ("in_grid").
            in_grid = record.get("in_grid", False) or spec.phase == "lr"
            record.update(
                {"variant": spec.variant, "phase": spec.phase, "in_grid": in_grid, "lr": spec.lr}
                | {"seed": spec.seed, "steps": spec.steps, "fraction": round(spec.steps / full_steps, 4)}
            )
        if self.wandb is not None:
            self.hand_to_agents([spec.name(self.study) for spec in specs])
            return
        planned = [
            PlannedRun(spec.name(self.study), command_for(self.study, spec, self.runs_dir, self.threads))
            for spec in specs
        ]
        # A diverged run is an outcome (its rate loses), not a stop to resume: it would diverge again.
        todo = [r for r in planned if self.summary(r.name).get("status") not in OUTCOMES]
        # Longest first: a batch's long runs then overlap its short ones instead of running on alone at
        # its end while the other workers idle (a width-256 run takes five times a width-64 one).
        spec_of = {spec.name(self.study): spec for spec in specs}
        todo.sort(key=lambda r: -training_flops(self.study, spec_of[r.name]))
        # A run that ended in a batch the study was stopped during has no times here; the runner wrote them.
        ended = recorded_runs(self.runs_dir)
        for r in planned:
            if r not in todo and self.records[r.name].get("seconds") is None and r.name in ended:
                self.records[r.name].update({k: ended[r.name].get(k) for k in RUN_TIMES})
        for r in todo:
            # A run stopped after a checkpoint continues from it (the runner resumes it, bit for bit on the
            # CPU); one stopped before its first starts again from nothing: its partial record would mislead.
            if not checkpoint.list_checkpoints(self.runs_dir / r.name):
                shutil.rmtree(self.runs_dir / r.name, ignore_errors=True)
        try:
            if todo:
                SweepRunner(todo, self.runs_dir, self.parallel, self.threads).run()
        finally:
            # also when stopped: the runs that ended keep their times
            for r in todo:
                if r.returncode is not None:
                    self.records[r.name].update({k: getattr(r, k) for k in RUN_TIMES})
            for spec in specs:
                self.records[spec.name(self.study)]["status"] = self.summary(spec.name(self.study)).get(
                    "status", "failed"
                )
            self.save()

    def hand_to_agents(self, names: list[str]) -> None:
        """Go on when W&B has every run of this batch finished; else create its sweep (once) and stop."""
        missing = [n for n in names if self.summary(n).get("status") != "finished"]
        for name in names:
            self.records[name]["status"] = self.summary(name).get("status", "pending")
        if not missing:
            self.save()
            return
        key = ",".join(sorted(names))
        if key not in self.sweeps:
            self.sweeps[key] = self.wandb.create_sweep(self.study, sorted(missing))
        self.save()
        raise Pending(
            f"{len(missing)} of {len(names)} runs of this phase are not finished in W&B. Run them with "
            f"`wandb agent {self.wandb.project}/{self.sweeps[key]}` (on as many machines as you like), "
            "then run this command again for the next phase"
        )

    def save(self, **extra: Any) -> None:
        study = self.study
        state = {
            "study": study.name,
            "file": str(study.path),
            "base": study.base,
            "overrides": study.overrides,
            "select_metric": study.select_metric,
            "test_metric": study.test_metric,
            "budget": {
                "steps": budget(study, base := study.variants[0])[0],
                "tokens": tokens_per_run(study, base),
            },
            "seeds": study.seeds,
            "selection_seeds": study.selection_seeds,
            "rungs": study.rungs,
            "variants": [
                {
                    "label": v.label,
                    "overrides": v.overrides,
                    "lr_from": v.lr_from,
                    "lr": v.lr,
                    "lr_grid": self.grids.get(v.label, []),
                    "chosen_lr": self.chosen.get(v.lr_from or v.label),
                    "seeds": study.seeds_of(v),
                    "budget": dict(zip(("steps", "warmup_steps"), budget(study, v), strict=True)),
                }
                for v in study.variants
            ],
            "questions": [vars(q) for q in study.questions],
            "runs": list(self.records.values()),
        }
        if self.sweeps:
            state["wandb_sweeps"] = self.sweeps
        previous = self.study_dir / "study.json"
        if previous.is_file():
            old = json.loads(previous.read_text())
            state.update({k: old[k] for k in ("unigram_loss", "machine") if k in old})
        state.update(extra)
        atomic_write_json(previous, state)


# ------------------------------------------------------------------------------------------------ phases


def choose_learning_rates(study: Study, ex: Executor) -> dict[str, float]:
    """Phase 1: successive halving over each tuned variant's grid, then grow the grid past a winning edge.
    Returns the rate of every variant that has one of its own: chosen, or fixed in advance (``lr``)."""
    tuned = [v for v in study.variants if v.chooses_rate]
    alive = {v.label: study.grid_of(v) for v in tuned}
    ex.grids = {v.label: study.grid_of(v) for v in tuned}
    for i, fraction in enumerate(study.rungs):
        last = i == len(study.rungs) - 1
        seeds = study.selection_seeds if last else study.selection_seeds[:1]
        specs = {
            v.label: {
                lr: [RunSpec(v.label, lr, s, rung_steps(study, v, fraction)[0], "lr") for s in seeds]
                for lr in alive[v.label]
            }
            for v in tuned
        }
        batch = [s for per_lr in specs.values() for group in per_lr.values() for s in group]
        ex.run_batch(batch)
        score_whole(ex, study.select_metric, [s.name(study) for s in batch], "select_score_")
        for v in tuned:
            ranked = sorted(alive[v.label], key=lambda lr, v=v: score(study, ex, specs[v.label][lr]))
            alive[v.label] = ranked if last else ranked[: max(1, math.ceil(len(ranked) * study.keep))]
    chosen = {label: lrs[0] for label, lrs in alive.items()}
    for _ in range(study.max_extend):
        edges = {label: past_edge(ex.grids[label], lr) for label, lr in chosen.items()}
        edges = {label: lr for label, lr in edges.items() if lr is not None}
        if not edges:
            break
        batch = {
            label: [
                RunSpec(label, lr, s, budget(study, study.variant(label))[0], "lr")
                for s in study.selection_seeds
            ]
            for label, lr in edges.items()
        }
        grown = [s for group in batch.values() for s in group]
        ex.run_batch(grown)
        score_whole(ex, study.select_metric, [s.name(study) for s in grown], "select_score_")
        for label, lr in edges.items():
            ex.grids[label] = sorted([*ex.grids[label], lr])
            best = [RunSpec(label, chosen[label], s.seed, s.steps, "lr") for s in batch[label]]
            if score(study, ex, batch[label]) < score(study, ex, best):
                chosen[label] = lr
    return chosen | {v.label: v.lr for v in study.variants if v.lr is not None}


def past_edge(grid: list[float], best: float) -> float | None:
    """The next rate beyond the grid's edge when ``best`` sits on that edge (same ratio as the grid's first
    step), else None: an inner winner needs no more rates."""
    ratio = grid[1] / grid[0]
    if best == grid[0]:
        return grid[0] / ratio
    if best == grid[-1]:
        return grid[-1] * ratio
    return None


def seed_runs(study: Study, ex: Executor, chosen: dict[str, float]) -> list[str]:
    """Phase 2: every variant at its chosen rate, for each of its seeds; returns the runs' names. Seed runs
    at a rate chosen before a later selection run moved the choice stay in the records, not in these."""
    specs = []
    for v in study.variants:
        lr = chosen.get(v.lr_from or v.label)
        if lr is None:
            continue
        steps = budget(study, v)[0]
        specs += [RunSpec(v.label, lr, s, steps, "seeds") for s in study.seeds_of(v)]
    ex.run_batch(specs)
    return [spec.name(study) for spec in specs]


def whole_split(metric: str) -> str | None:
    """The split a metric scores whole after training (``whole_<split>/loss``), if it is one."""
    m = re.fullmatch(r"whole_(\w+)/loss", metric)
    return m.group(1) if m else None


def score_whole(ex: Executor, metric: str, names: list[str], record_prefix: str) -> None:
    """Score each named finished run's final checkpoint on the whole split ``metric`` names (``python -m
    minigpt.evaluate ... --into-summary``), through the sweep runner; runs already scored are skipped, so
    this resumes too. Phase 1 calls it for the selection metric, phase 2b for the test metric; each records
    its scoring's time, load and CPU time under its own ``record_prefix`` (``select_score_``, ``score_``)."""
    split = whole_split(metric)
    if split is None or ex.wandb is not None:
        return
    prefix = f"score-{split}-"
    # A run copied in from committed records keeps its summary but not its weights: left to fail here, its
    # rate would score inf and silently lose the choice.
    weightless = [
        name
        for name in names
        if ex.summary(name).get("status") == "finished"
        and metric not in ex.summary(name)
        and not checkpoint.list_checkpoints(ex.runs_dir / name)
    ]
    if weightless:
        raise StudyError(
            f"{len(weightless)} finished run(s) need a {metric} score but hold no checkpoint to score "
            f"(records keep no weights): {', '.join(weightless)} in {ex.runs_dir}. Score them where they "
            "were made (python -m minigpt.evaluate RUN_DIR --split "
            f"{split} --into-summary), or delete their directories to train them again"
        )
    jobs = [
        PlannedRun(
            prefix + name,
            [sys.executable, "-m", "minigpt.evaluate", str(ex.runs_dir / name), "--split", split]
            + ["--into-summary", f"--threads={ex.threads}"],
        )
        for name in names
        if ex.summary(name).get("status") == "finished"
    ]

    def scored(job: str) -> bool:
        return metric in ex.summary(job.removeprefix(prefix))

    todo = [job for job in jobs if not scored(job.name)]
    if not todo:
        return
    SweepRunner(todo, ex.runs_dir, ex.parallel, ex.threads, finished=scored).run()
    for job in todo:
        record = ex.records[job.name.removeprefix(prefix)]
        keys = ("returncode", "seconds", "load_start", "load_end", "cpu_user_s", "cpu_sys_s")
        record.update({f"{record_prefix}{k}": getattr(job, k) for k in keys})
        if job.status != "finished":
            record["status"] = "failed"
    ex.save()


def unigram_loss(study: Study) -> float:
    """Entropy (nats) of the training split's unigram distribution: the loss of a model that ignores context,
    the level below which a run has learnt something beyond token frequencies."""
    import numpy as np

    from minigpt.data import load_split, load_tokenizer

    config = load_experiment(study.base)
    config = apply_overrides(config, study.overrides)
    tokens = load_split(config.data, "train", load_tokenizer(config.data), show_progress=False).tokens
    counts = np.bincount(np.asarray(tokens), minlength=config.model.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ------------------------------------------------------------------------------------------------ the plan


def estimate(study: Study, ex: Executor) -> tuple[float, float, str]:
    """Tokens per second of one run and the seconds a run spends outside training, from the study's finished
    runs when there are any; else assumed, and said so."""
    rates, overheads = [], []
    for name, record in ex.records.items():
        summary = ex.summary(name)
        if summary.get("status") == "finished" and record.get("seconds"):
            rates.append(summary["tokens_per_sec"])
            overheads.append(record["seconds"] - summary["train_seconds"])
    if rates:
        return (
            statistics.median(rates),
            statistics.median(overheads),
            f"measured on {len(rates)} finished runs",
        )
    rate = measure_speed(study, ex.threads)
    return rate, ASSUMED_OVERHEAD_S, "speed of 3 steps of the first variant measured now, start-up assumed"


def measure_speed(study: Study, threads: int) -> float:
    """Training tokens per second of the first variant on this machine's CPU, from a few steps in process."""
    import torch

    from minigpt import perf
    from minigpt.model import GPT

    config = study.config_of(study.variants[0])
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    autocast = perf.autocast_for(perf.pick_precision(config.train.precision, device), device)
    model = GPT(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, config.model.vocab_size, (config.train.batch_size, config.model.block_size))

    def step() -> None:
        with autocast():
            _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocation and kernel selection stay out of the timing
    start = time.perf_counter()
    for _ in range(3):
        step()
    return 3 * x.numel() / (time.perf_counter() - start)


def describe_plan(study: Study, ex: Executor, parallel: int) -> str:
    """Runs and tokens of each phase (phase 1 at its largest: every edge grown), how many of them have
    finished (run directories copied in from elsewhere included), and the time the rest takes at the measured
    speed."""
    tuned = [v for v in study.variants if v.chooses_rate]
    lines = [f"study {study.name}: {len(study.variants)} variants ({len(tuned)} with their own lr grid)"]
    planned: dict[str, list[int]] = {v.label: [] for v in study.variants}  # each planned run's steps

    def add(phase: str, runs: list[tuple[Variant, int]]) -> None:
        tokens = sum(steps * tokens_per_step(study, variant) for variant, steps in runs)
        for variant, steps in runs:
            planned[variant.label].append(steps)
        lines.append(f"  {phase}: {len(runs)} runs, {tokens:,} training tokens")

    alive = {v.label: len(study.grid_of(v)) for v in tuned}
    for i, fraction in enumerate(study.rungs):
        seeds = len(study.selection_seeds) if i == len(study.rungs) - 1 else 1
        rates = "/".join(str(n) for n in sorted(set(alive.values())))
        add(
            f"phase 1, rung {i + 1} ({fraction:.3g} of the budget, {rates} rates x {seeds} seed(s))",
            [(v, rung_steps(study, v, fraction)[0]) for v in tuned for _ in range(alive[v.label] * seeds)],
        )
        alive = {label: max(1, math.ceil(n * study.keep)) for label, n in alive.items()}
    add(
        f"phase 1, grid growth (at most {study.max_extend} more rates each)",
        [
            (v, budget(study, v)[0])
            for v in tuned
            for _ in range(study.max_extend * len(study.selection_seeds))
        ],
    )
    counts = "/".join(str(n) for n in sorted({len(study.seeds_of(v)) for v in study.variants}))
    add(
        f"phase 2 ({counts} seeds; the selection seeds' runs at the chosen rate are reused)",
        [
            (v, budget(study, v)[0])
            for v in study.variants
            for s in study.seeds_of(v)
            if not v.chooses_rate or s not in study.selection_seeds
        ],
    )
    rate, overhead, basis = estimate(study, ex)
    finished = finished_steps(study, ex)
    runs = tokens = done_runs = done_tokens = 0
    for v in study.variants:
        # a variant's finished runs beyond its plan (seeds at a rate chosen before) leave nothing less to do
        done = sorted(finished[v.label], reverse=True)[: len(planned[v.label])]
        runs, done_runs = runs + len(planned[v.label]), done_runs + len(done)
        tokens += sum(planned[v.label]) * tokens_per_step(study, v)
        done_tokens += sum(done) * tokens_per_step(study, v)
    lines.append(f"  at most {runs} runs, {tokens:,} training tokens; {done_runs} already finished")
    left_runs, left_tokens = runs - done_runs, max(0, tokens - done_tokens)
    seconds = (left_tokens / rate + left_runs * overhead) / parallel
    lines.append(
        f"  about {seconds / 3600:.1f} h at most for the {left_runs} left, {parallel} in parallel, here: "
        f"{rate:,.0f} tokens/s a run and {overhead:.0f} s of start-up and evaluation each ({basis})"
    )
    return "\n".join(lines)


def finished_steps(study: Study, ex: Executor) -> dict[str, list[int]]:
    """The step counts of each variant's finished runs: every run directory (or W&B run) named as this study
    names its runs, those copied in from elsewhere included, not only the ones ``study.json`` records."""
    if ex.wandb is not None:
        names = list(ex.remote)
    else:
        names = [p.name for p in ex.runs_dir.iterdir() if p.is_dir()] if ex.runs_dir.is_dir() else []
    steps: dict[str, list[int]] = {v.label: [] for v in study.variants}
    for name in names:
        try:
            spec = spec_from_name(study, name)
        except StudyError:  # another study's run, or not a run
            continue
        if ex.summary(name).get("status") == "finished":
            steps[spec.variant].append(spec.steps)
    return steps


def machine() -> dict[str, Any]:
    """What the figures were measured on: what every run records (``perf.describe_hardware``), plus the
    AVX and AMX flags ``lscpu`` lists."""
    info: dict[str, Any] = {"platform": platform.platform(), "cores": os.cpu_count()}
    info |= perf.describe_hardware(torch.device("cpu"))
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Flags":
            info["flags"] = [f for f in value.split() if f.startswith(("avx", "amx"))]
    return info


def records_left_behind(records: Path, study_dir: Path) -> str | None:
    """Why the study must not start, when ``records`` (which its report will rewrite) holds runs that the
    study's folder lacks: started without them, it would train them all again. ``None`` when none."""
    held = records / "runs"
    if not held.is_dir():
        return None
    have = study_dir / "runs"
    missing = sorted(p.name for p in held.iterdir() if p.is_dir() and not (have / p.name).is_dir())
    if not missing:
        return None
    copy = (
        f"cp -rn {shlex.quote(str(held))}/. {shlex.quote(str(have))}/"
        if study_dir.exists()
        else f"mkdir -p {shlex.quote(str(study_dir.parent))} && cp -r {shlex.quote(str(records))} "
        f"{shlex.quote(str(study_dir))}"
    )
    return (
        f"--records {records} holds {len(missing)} run(s) that {study_dir} lacks ({', '.join(missing[:3])}"
        f"{', ...' if len(missing) > 3 else ''}); started without them, the study would train them again "
        f"and its report would overwrite their records. Copy them in first ({copy}), or give --records a "
        "folder of its own"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minigpt.study", description=__doc__.split("\n")[0])
    parser.add_argument("file", help="the study file (YAML), e.g. sweeps/studies/cpu.yaml")
    parser.add_argument("--parallel", type=int, default=1, help="runs at the same time")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per run (default: cores // parallel)"
    )
    parser.add_argument("--out-dir", default="runs/studies", help="the study's folder goes under this")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--report-out", default="", help="after phase 2, write the report into this folder")
    parser.add_argument("--records", default="", help="with --report-out: copy the run records here first")
    parser.add_argument(
        "--wandb-sweep",
        default="",
        metavar="ENTITY/PROJECT",
        help="hand each phase's runs to `wandb agent` as a W&B sweep in this project; read results from it",
    )
    parser.add_argument("--run-one", action="store_true", help="(what a W&B agent calls) train one run")
    args, rest = parser.parse_known_args(argv)
    if args.run_one:
        return run_one(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: cores // parallel), got {args.threads}")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.parallel)
    try:
        study = load_study(args.file)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.wandb_sweep and whole_split(study.select_metric):
        print(
            f"error: select_metric {study.select_metric} scores checkpoints on this machine, and runs handed "
            "to W&B agents leave theirs elsewhere; choose on final_val/loss with --wandb-sweep",
            file=sys.stderr,
        )
        return 2
    study_dir = Path(args.out_dir) / study.name
    if args.records and args.report_out:
        problem = records_left_behind(Path(args.records), study_dir)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    remote = WandbRuns(args.wandb_sweep, study.path) if args.wandb_sweep else None
    ex = Executor(study, study_dir, args.parallel, threads, remote)
    print(describe_plan(study, ex, args.parallel), flush=True)
    if args.dry_run:
        return 0
    study_dir.mkdir(parents=True, exist_ok=True)
    ex.save(machine=machine(), unigram_loss=unigram_loss(study), load_at_start=load_average())
    started = time.time()
    try:
        chosen = choose_learning_rates(study, ex)
        ex.chosen = chosen
        ex.save()
        print(
            "[study] chosen learning rates: " + ", ".join(f"{k} {v:g}" for k, v in chosen.items()), flush=True
        )
        seeds = seed_runs(study, ex, chosen)
        score_whole(ex, study.test_metric, seeds, "score_")
    except Pending as e:
        print(f"[study] {e}")
        return 0
    except StudyError as e:  # found mid-study (a run that cannot be scored): the records so far are saved
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the sweep runner turns it into this): run_batch saved
        print(
            "\n[study] stopped: the runs that ended are kept with their times; the same command resumes",
            file=sys.stderr,
        )
        return 130
    ex.save(load_at_end=load_average(), last_session_seconds=round(time.time() - started, 1))
    failed = [name for name, r in ex.records.items() if r.get("status") != "finished"]
    if failed:
        print(f"[study] {len(failed)} runs did not finish: {', '.join(failed)}", file=sys.stderr)
    if args.report_out:
        from analysis.study_report import write_study_report

        path = write_study_report(
            study_dir, Path(args.report_out), Path(args.records) if args.records else None
        )
        print(f"[study] report: {path}")
    return 1 if failed else 0


def run_one(args: argparse.Namespace, rest: list[str]) -> int:
    """Train the one run a W&B agent names (``--study.run=NAME``), with W&B's sweep and run ids in the
    environment, so that the run joins the sweep."""
    names = [a.split("=", 1)[1] for a in rest if a.startswith("--study.run=")]
    try:
        study = load_study(args.file)
        if len(names) != 1:
            raise StudyError(f"--run-one takes one --study.run=NAME, got {rest}")
        spec = spec_from_name(study, names[0])
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs_dir = Path(args.out_dir) / study.name / "runs"
    return subprocess.call(command_for(study, spec, runs_dir, args.threads))


if __name__ == "__main__":
    sys.exit(main())
