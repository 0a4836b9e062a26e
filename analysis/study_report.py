"""Write the report of an ablation study (phase 3 of ``python -m minigpt.study``): the setup, the
learning-rate sensitivity of every variant, and per question the tests it asks for, on the test split.

    python -m analysis.study_report runs/studies/cpu-ablations --out reports/ablations-cpu \\
        --records reports/ablations-cpu/records
    python -m analysis.study_report reports/ablations-cpu/records --out reports/ablations-cpu

STUDY_DIR holds ``study.json`` (the plan and every run's phase, lr, seed, budget fraction, status, CPU time
and load) and ``runs/<run name>/`` run directories. Phase-2 runs (each variant at its chosen lr, the same
seeds for every variant) answer the questions; each question is one Holm family. ``--records`` first copies
what the report needs (``study.json``; each run's config, summary and metrics) and reports from the copy.
``report.md`` holds no timestamps or absolute paths, so the same records give the same file.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from analysis import plots
from analysis.records import copy_records
from analysis.report import add_artifact_option, display_path, fmt_p, log_report_artifact, ppl_interval
from analysis.runs import Run, RunsError, load_runs
from analysis.stats import (
    MAX_EXACT,
    Curve,
    PairedSummary,
    Tost,
    equivalence_verdict,
    holm,
    mean_curve,
    paired_summary,
    tost,
)
from analysis.variants import PALETTE
from minigpt.storage import atomic_write_bytes

ALPHA = 0.05
POWER = 0.8
DEFAULT_RULE_GAP = 0.5
"""Without a success question, a run "trains" when ``RULE_METRIC`` ends this many nats below the unigram
level (the rule issue 20 fixes in advance)."""
RULE_METRIC = "final_val/loss"
"""What a rule reads unless it names a metric: the validation estimate every run makes at its end (a
whole-split selection metric scores only the grid runs, so seeds outside the grid would count as not
trained)."""


def is_grid_point(entry: dict[str, Any]) -> bool:
    """Whether a ``study.json`` run is a point of the lr grid (phase 1, or a phase-2 seed reused from it)."""
    return entry.get("phase") == "lr" or bool(entry.get("in_grid"))


@dataclass
class Study:
    spec: dict[str, Any]
    """``study.json`` as written by the study command."""
    runs: dict[str, Run]
    """Run name -> its records, for the runs whose directory exists."""

    @property
    def variants(self) -> list[dict[str, Any]]:
        return self.spec["variants"]

    def variant(self, label: str) -> dict[str, Any]:
        for v in self.variants:
            if v["label"] == label:
                return v
        raise RunsError(f"study.json: a question names variant {label!r}, which is not among its variants")

    def entries(self, metric: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The finished runs of ``study.json`` whose fields equal ``match`` and whose summary holds
        ``metric`` (default: the selection metric; grid runs need not have scored the test split)."""
        metric = metric or self.spec["select_metric"]
        return [
            e
            for e in self.spec["runs"]
            if all(e.get(k) == v for k, v in match.items())
            and e.get("status") == "finished"
            and e["name"] in self.runs
            and isinstance(self.runs[e["name"]].summary.get(metric), int | float)
        ]

    def grid(self, **match: Any) -> list[dict[str, Any]]:
        """The finished runs of phase 1 (the lr grid), including those phase 2 reused as seeds."""
        return [e for e in self.entries(**match) if is_grid_point(e)]

    def is_at_chosen_lr(self, entry: dict[str, Any]) -> bool:
        """Whether a run is at its variant's chosen lr. A choice can move when more selection runs come
        in (a second selection seed); seed runs made at the earlier choice stay in ``study.json``."""
        lr = self.variant(entry["variant"]).get("chosen_lr")
        return isinstance(lr, int | float) and math.isclose(entry["lr"], lr, rel_tol=1e-9)

    def phase2(self, label: str) -> dict[Any, Run]:
        """Seed -> the variant's run at its chosen lr (phase 2), where it scored the test split."""
        entries = self.entries(self.spec["test_metric"], variant=label, phase="seeds")
        return {e["seed"]: self.runs[e["name"]] for e in entries if self.is_at_chosen_lr(e)}

    def colours(self) -> dict[str, str]:
        return {v["label"]: PALETTE[i % len(PALETTE)] for i, v in enumerate(self.variants)}


def load_study(study_dir: str | Path) -> Study:
    """``study.json`` and the run directories under ``runs/``; a missing file is an error naming it."""
    study_dir = Path(study_dir)
    path = study_dir / "study.json"
    if not path.is_file():
        raise RunsError(f"no study.json in {study_dir}; give the folder the study command wrote")
    try:
        spec = json.loads(path.read_text())
    except ValueError as e:
        raise RunsError(f"{path} is not valid JSON ({e})") from e
    missing = [k for k in ("variants", "questions", "runs", "select_metric", "test_metric") if k not in spec]
    if missing:
        raise RunsError(f"{path} lacks {', '.join(missing)}; was it written by python -m minigpt.study?")
    runs_dir = study_dir / "runs"
    runs = {r.name: r for r in load_runs([runs_dir])} if runs_dir.is_dir() else {}
    return Study(spec, runs)


# ------------------------------------------------------------------------------------------------ analysis


@dataclass
class Row:
    """One variant of a question: its test losses and, against the question's baseline, its tests."""

    label: str
    losses: dict[Any, float]
    """Seed -> test loss of the phase-2 run."""
    paired: PairedSummary | None = None
    """None for the baseline and for a variant sharing fewer than two seeds with it."""
    t_holm: float = math.nan
    flip_holm: float = math.nan
    tost: Tost | None = None
    tost_holm: float = math.nan
    verdict: str = ""
    trained: list[Any] = field(default_factory=list)
    """Seeds whose run trains by the question's success rule (empty without a rule)."""
    fisher_p: float = math.nan
    fisher_holm: float = math.nan

    @property
    def split(self) -> bool:
        """Some seeds train and others do not: two kinds of run that one mean does not describe."""
        return 0 < len(self.trained) < len(self.losses)


@dataclass
class QuestionResult:
    question: dict[str, Any]
    rule: dict[str, Any] | None
    """The success rule that says which runs train: the question's own, or the study's, or the default."""
    rows: list[Row]
    """The baseline first, then the question's variants in its order."""


def success_rule(study: Study, question: dict[str, Any]) -> dict[str, Any] | None:
    """The rule a run must meet to count as trained: a success question's own rule; for other questions
    the first success rule of the study that covers one of its variants, else the default (``RULE_METRIC``
    ``DEFAULT_RULE_GAP`` nats below the unigram level), else None."""
    if question["kind"] == "success":
        return resolve_rule(study, question["rule"])
    return rule_covering(study, {question["baseline"], *question["variants"]})


def rule_covering(study: Study, labels: set[str]) -> dict[str, Any] | None:
    """The first success rule of the study whose question covers one of ``labels``, else the default, else
    None (see ``success_rule``)."""
    for q in study.spec["questions"]:
        if q["kind"] == "success" and labels & {q["baseline"], *q["variants"]}:
            return resolve_rule(study, q["rule"])
    unigram = study.spec.get("unigram_loss")
    if isinstance(unigram, int | float):
        return {"metric": RULE_METRIC, "below": round(unigram - DEFAULT_RULE_GAP, 6)}
    return None


def resolve_rule(study: Study, rule: dict[str, Any]) -> dict[str, Any]:
    """A study file's rule as a fixed threshold: ``below_unigram_by: g`` becomes ``below`` the unigram loss
    minus g; the metric defaults to ``RULE_METRIC``."""
    resolved = {"metric": rule.get("metric", RULE_METRIC)}
    if "below_unigram_by" in rule:
        unigram = study.spec.get("unigram_loss")
        if not isinstance(unigram, int | float):
            raise RunsError("study.json: a rule below_unigram_by needs unigram_loss, which it lacks")
        resolved["below"] = round(unigram - rule["below_unigram_by"], 6)
    else:
        resolved["below"] = rule["below"]
    return resolved


def trains(run: Run, rule: dict[str, Any]) -> bool:
    value = run.summary.get(rule["metric"])
    return isinstance(value, int | float) and value < rule["below"]


def analyse_question(study: Study, question: dict[str, Any]) -> QuestionResult:
    """The question's tests on the test metric of the phase-2 runs; Holm's correction over this question's
    comparisons only (one family per question)."""
    test = study.spec["test_metric"]
    rule = success_rule(study, question)
    rows = []
    for label in [question["baseline"], *question["variants"]]:
        study.variant(label)  # an unknown label is an error that names it
        runs = study.phase2(label)
        row = Row(label, {seed: float(r.summary[test]) for seed, r in sorted(runs.items(), key=str)})
        if rule is not None:
            row.trained = [seed for seed, r in sorted(runs.items(), key=str) if trains(r, rule)]
        rows.append(row)
    base = rows[0]
    for row in rows[1:]:
        shared = [s for s in row.losses if s in base.losses]
        if len(shared) >= 2:
            diffs = [row.losses[s] - base.losses[s] for s in shared]
            row.paired = paired_summary(diffs, POWER, ALPHA)
            if question["kind"] == "equivalence":
                row.tost = tost(diffs, math.log1p(question["margin"]), ALPHA)
        if rule is not None and row.losses and base.losses:
            table = [
                [len(row.trained), len(row.losses) - len(row.trained)],
                [len(base.trained), len(base.losses) - len(base.trained)],
            ]
            row.fisher_p = float(stats.fisher_exact(table).pvalue)
    others = rows[1:]
    for name, source in (
        ("t_holm", lambda r: r.paired.t_p if r.paired else math.nan),
        ("flip_holm", lambda r: r.paired.sign_flip_p if r.paired else math.nan),
        ("tost_holm", lambda r: r.tost.p if r.tost else math.nan),
        ("fisher_holm", lambda r: r.fisher_p),
    ):
        for row, adjusted in zip(others, holm([source(r) for r in others]), strict=True):
            setattr(row, name, adjusted)
    for row in others:
        if row.tost is not None:
            row.verdict = equivalence_verdict(row.tost, row.tost_holm, ALPHA)
    return QuestionResult(question, rule, rows)


@dataclass
class AtBaselineLr:
    """A variant run in the lr grid at the baseline's chosen lr with the whole budget, against the
    baseline at that lr (same seeds)."""

    label: str
    lr: float
    paired: PairedSummary


def at_baseline_lr(study: Study, question: dict[str, Any]) -> list[AtBaselineLr]:
    """For each variant of ``question`` whose chosen lr differs from the baseline's: the paired
    comparison at the baseline's lr, where phase 1 ran it with the whole budget for shared seeds."""
    test = study.spec["test_metric"]
    lr = study.variant(question["baseline"])["chosen_lr"]

    def full_budget_at_lr(label: str) -> dict[Any, float]:
        by_seed: dict[Any, float] = {}
        # phase 2 is listed after phase 1, so its run wins a seed both ran at this lr
        for e in study.entries(test, variant=label):
            if e.get("fraction", 1.0) >= 1.0 and math.isclose(e["lr"], lr, rel_tol=1e-9):
                by_seed[e["seed"]] = float(study.runs[e["name"]].summary[test])
        return by_seed

    base = full_budget_at_lr(question["baseline"])
    results = []
    for label in question["variants"]:
        if math.isclose(study.variant(label)["chosen_lr"], lr, rel_tol=1e-9):
            continue
        losses = full_budget_at_lr(label)
        shared = sorted(set(losses) & set(base), key=str)
        if shared:
            results.append(AtBaselineLr(label, lr, paired_summary([losses[s] - base[s] for s in shared])))
    return results


# ------------------------------------------------------------------------------------------------- writing


def ratio(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{math.exp(x):.3f}"


def ratio_ci(p: PairedSummary) -> str:
    if math.isnan(p.diff.half_width):
        return ratio(p.diff.mean)
    return f"{ratio(p.diff.mean)} [{ratio(p.diff.low)}, {ratio(p.diff.high)}]"


def p_is(p: float) -> str:
    """``p = 0.035`` or ``p < 0.001``, for prose."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def with_holm(p: float, adjusted: float) -> str:
    return f"{fmt_p(p)} ({fmt_p(adjusted)})"


def sd_text(p: PairedSummary) -> str:
    s = p.spread
    if math.isnan(s.sd):
        return "n/a"
    return f"{s.sd:.4f} [{s.low:.4f}, {s.high:.4f}]"


def mde_text(p: PairedSummary) -> str:
    if math.isnan(p.mde):
        return "n/a"
    return f"{ratio(p.mde)} [{ratio(p.mde_low)}, {ratio(p.mde_high)}]"


def rule_text(rule: dict[str, Any]) -> str:
    return f"`{rule['metric']}` < {rule['below']:g}"


def question_table(result: QuestionResult) -> list[str]:
    kind = result.question["kind"]
    head = ["variant", "seeds", "test ppl [95% CI]"]
    if kind == "success":
        head += ["trained", "Fisher p (Holm)", "test ppl of those that trained"]
    else:
        head += [
            "ppl ratio to baseline [95% CI]",
            "paired t p (Holm)",
            "sign-flip p (Holm)",
            "SD of paired diff. [95% CI]",
            "MDE ratio, 80% power [range]",
        ]
    if kind == "equivalence":
        head += ["90% CI of ratio", "TOST p (Holm)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for i, row in enumerate(result.rows):
        label = f"**{row.label}** (baseline)" if i == 0 else row.label
        cells = [label, str(len(row.losses)), ppl_interval(list(row.losses.values()))]
        if kind == "success":
            trained = [row.losses[s] for s in row.trained]
            cells += [f"{len(row.trained)}/{len(row.losses)}"]
            cells += ["" if i == 0 else with_holm(row.fisher_p, row.fisher_holm), ppl_interval(trained)]
        elif i == 0 or row.paired is None:
            cells += ["1" if i == 0 else "n/a (fewer than 2 shared seeds)", "", "", "", ""]
        else:
            p = row.paired
            split = f" (split: {len(row.trained)}/{len(row.losses)} train)" if row.split else ""
            cells += [
                ratio_ci(p) + split,
                with_holm(p.t_p, row.t_holm),
                with_holm(p.sign_flip_p, row.flip_holm),
                sd_text(p),
                mde_text(p),
            ]
        if kind == "equivalence":
            if i == 0 or row.tost is None:
                cells += ["", "", ""]
            else:
                t = row.tost
                cells += [f"[{ratio(t.low)}, {ratio(t.high)}]", with_holm(t.p, row.tost_holm), row.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict_lines(result: QuestionResult) -> list[str]:
    """One plain sentence per comparison: what the data show, and what this comparison could not detect."""
    q = result.question
    base = result.rows[0]
    lines = []
    for row in result.rows[1:]:
        name = f"{row.label} vs {base.label}"
        if q["kind"] == "success":
            lines.append(
                f"- {name}: {len(row.trained)} of {len(row.losses)} seeds train by {rule_text(result.rule)}, "
                f"against {len(base.trained)} of {len(base.losses)} for the baseline (Fisher's exact test, "
                f"Holm-adjusted {p_is(row.fisher_holm)}): "
                + (
                    "the success rates differ."
                    if row.fisher_holm < ALPHA
                    else "no difference in success rate is shown at these counts."
                )
            )
            continue
        p = row.paired
        if p is None:
            lines.append(f"- {name}: fewer than two shared seeds; nothing can be said.")
            continue
        n = p.diff.n
        power_text = (
            f"with {n} seeds this comparison detects a perplexity ratio of about {ratio(p.mde)} "
            f"({ratio(p.mde_low)} to {ratio(p.mde_high)} given the uncertainty of its SD) with 80% power"
        )
        floor = 2 / 2**n
        if floor > ALPHA:
            power_text += (
                f"; the exact sign-flip test cannot reach p < {ALPHA:g} with {n} pairs (floor {floor:.3g})"
            )
        if row.split or base.split:
            who = row if row.split else base
            lines.append(
                f"- {name}: **split outcome**: {len(who.trained)} of {len(who.losses)} seeds of {who.label} "
                f"train by {rule_text(result.rule)}, the others do not (Fisher's exact test against the "
                f"other side: {p_is(row.fisher_p)}); test ppl among those that trained: "
                f"{ppl_interval([who.losses[s] for s in who.trained])}. The mean ratio {ratio_ci(p)} "
                "averages two kinds of run and is not a summary; read the success counts."
            )
            continue
        if q["kind"] == "equivalence":
            margin = q["margin"]
            meaning = {
                "equivalent": f"equivalent within ±{margin:.1%} in perplexity",
                "not equivalent": f"not equivalent: the difference exceeds ±{margin:.1%}",
                "inconclusive": f"inconclusive: the 90% interval crosses the ±{margin:.1%} margin",
            }[row.verdict]
            lines.append(
                f"- {name}: {meaning} (90% CI of the ratio [{ratio(row.tost.low)}, {ratio(row.tost.high)}], "
                f"TOST Holm-adjusted {p_is(row.tost_holm)}); {power_text}."
            )
            continue
        if row.t_holm < ALPHA:
            direction = "higher" if p.diff.mean > 0 else "lower"
            # every seed of one side trains and none of the other's: the ratio is between kinds of run
            contrast = ""
            if result.rule is not None and len(row.trained) != len(base.trained):
                contrast = (
                    f"; {len(row.trained)} of {len(row.losses)} seeds train by {rule_text(result.rule)}, "
                    f"against {len(base.trained)} of {len(base.losses)} for the baseline"
                )
            lines.append(
                f"- {name}: test perplexity is {direction} by a ratio of {ratio_ci(p)} (paired t, "
                f"Holm-adjusted {p_is(row.t_holm)}; exact sign-flip {p_is(p.sign_flip_p)}){contrast}; "
                f"{power_text}."
            )
        else:
            lines.append(
                f"- {name}: no difference detected (ratio {ratio_ci(p)}, Holm-adjusted paired t "
                f"{p_is(row.t_holm)}); {power_text}, so smaller effects are not ruled out."
            )
    return lines


def baseline_lr_lines(rows: list[AtBaselineLr]) -> list[str]:
    if not rows:
        return []
    lines = [
        f"At the baseline's lr ({rows[0].lr:g}), from the full-budget runs at that rate (the lr grid's, or "
        "seed runs of an earlier choice; fewer seeds; unadjusted p-values; n marks the shared seeds):",
        "",
        "| variant | n | ppl ratio to baseline [95% CI] | paired t p | sign-flip p |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        p = r.paired
        lines.append(
            f"| {r.label} | n={p.diff.n} | {ratio_ci(p)} | {fmt_p(p.t_p)} | {fmt_p(p.sign_flip_p)} |"
        )
    return lines + [""]


def fmt_lr(x: Any) -> str:
    return "n/a" if not isinstance(x, int | float) else f"{x:g}"


def setup_lines(study: Study) -> list[str]:
    s = study.spec
    budget = s.get("budget", {})
    entries = s["runs"]
    finished = [e for e in entries if e.get("status") == "finished"]
    # variants may have seeds of their own; variants with the same seeds are named together
    seeds_of: dict[str, set] = {}
    for e in entries:
        if e.get("phase") == "seeds" and study.is_at_chosen_lr(e):
            seeds_of.setdefault(e["variant"], set()).add(e["seed"])
    seed_sets: dict[tuple, list[str]] = {}
    for label, seeds in seeds_of.items():
        seed_sets.setdefault(tuple(sorted(seeds, key=str)), []).append(label)
    if len(seed_sets) <= 1:
        seeds_text = f"seeds {', '.join(map(str, next(iter(seed_sets), ()))) or 'none'} for every variant"
    else:
        seeds_text = "; ".join(
            # labels may hold commas ("post-LN, no warmup"), so each is quoted as code
            f"seeds {', '.join(map(str, seeds))} for {', '.join(f'`{label}`' for label in labels)}"
            for seeds, labels in seed_sets.items()
        )
    in_grid = [e for e in entries if is_grid_point(e)]
    grid_seeds = s.get("selection_seeds") or sorted({e["seed"] for e in in_grid}, key=str)
    # the runs' own fractions (what ran, rounded to whole steps), unless the study file repeats one (rungs
    # [1, 1]: every rate on one seed, then the best on all), which those cannot show
    rungs = sorted({float(e.get("fraction", 1.0)) for e in in_grid})
    if len(s.get("rungs") or []) > len(rungs):
        rungs = s["rungs"]
    rungs_text = f"rungs at {', '.join(f'{f:.3g}' for f in rungs) or 'none'} of the budget"
    if len(rungs) > 1 and len(grid_seeds) > 1:
        grid_text = (
            f"successive halving with {rungs_text}: seed {grid_seeds[0]} at every rung but the last, seeds "
            f"{', '.join(map(str, grid_seeds))} at the last and for rates added past a winning edge."
        )
    else:
        grid_text = (
            f"seeds {', '.join(map(str, grid_seeds)) or 'none'}, successive halving with {rungs_text}."
        )
    cpu = sum(e.get("cpu_user_s", 0.0) + e.get("cpu_sys_s", 0.0) for e in finished)
    # a finished run the study's runner did not train here (a run directory copied in from another study,
    # or one a W&B agent ran) has no CPU time in its record
    uncounted = sum("cpu_user_s" not in e for e in finished)
    wall = sum(e.get("seconds", 0.0) for e in finished)
    scored = [e for e in finished if "score_seconds" in e]
    score_cpu = sum(e.get("score_cpu_user_s", 0.0) + e.get("score_cpu_sys_s", 0.0) for e in scored)
    score_wall = sum(e["score_seconds"] for e in scored)
    selected = [e for e in finished if "select_score_seconds" in e]
    select_cpu = sum(
        e.get("select_score_cpu_user_s", 0.0) + e.get("select_score_cpu_sys_s", 0.0) for e in selected
    )
    load_keys = [f"{p}load_{end}" for p in ("", "score_", "select_score_") for end in ("start", "end")]
    loads = [e[k] for e in entries for k in load_keys if isinstance(e.get(k), int | float)]
    load = f"{min(loads):.2f} to {max(loads):.2f}" if loads else "not recorded"
    phases = {
        "lr": sum(is_grid_point(e) for e in finished),
        "seeds": sum(e.get("phase") == "seeds" and study.is_at_chosen_lr(e) for e in finished),
    }
    superseded = sum(e.get("phase") == "seeds" and not study.is_at_chosen_lr(e) for e in finished)
    unigram = s.get("unigram_loss")
    # warmup differs between variants that test it; a budget is the number of steps
    one_budget = len({(v.get("budget") or {}).get("steps") for v in study.variants}) <= 1
    stopping = any(
        isinstance(run.summary.get("early_stop/stopped_at_step"), int)
        for v in study.variants
        for run in study.phase2(v["label"]).values()
    )
    lines = [
        f"- Study `{s.get('study', '')}` from `{s.get('file', '')}`, base experiment `{s.get('base', '')}`.",
        (
            f"- Budget per full run: {budget.get('tokens', 0):,} training tokens ({budget.get('steps', 0):,} "
            "steps). "
            if one_budget
            else "- Budget per full run: each variant's own (the table's steps and warmup steps). "
        )
        + f"Learning-rate grid (phase 1): {grid_text}",
        f"- Learning rate chosen on `{s['select_metric']}` (validation); questions answered on "
        f"`{s['test_metric']}` (test) of phase-2 runs, {seeds_text} (same seed = same data order, so "
        + (
            "differences are paired)."
            if len(seed_sets) <= 1
            else "differences are paired over shared seeds)."
        ),
        f"- Runs: {len(entries)} planned, {len(finished)} finished ({phases['lr']} in the lr grid, "
        f"{phases['seeds']} at the chosen lr"
        + (
            f", {superseded} seed runs at a rate their variant chose before (the choice moved), kept in the "
            "records and left out of the questions' statistics"
            if superseded
            else ""
        )
        + f"); total CPU time (user + sys) {cpu / 3600:.2f} h "
        f"({cpu:,.0f} s), wall time summed over runs {wall / 3600:.2f} h; 1-minute load average at the runs' "
        f"starts and ends: {load}."
        + (
            f" {uncounted} of the finished runs were not trained by this study's runner (run directories "
            "copied in from another study, or runs of W&B agents): their CPU and wall time are not in these "
            "sums."
            if uncounted
            else ""
        )
        + (
            f" Scoring {len(selected)} grid runs on the whole validation split to choose the rate took "
            f"{select_cpu / 3600:.2f} CPU-hours more."
            if selected
            else ""
        )
        + (
            f" Scoring {len(scored)} seed runs on the whole split after training took {score_cpu / 3600:.2f} "
            f"CPU-hours more ({score_wall / 3600:.2f} h of wall time summed over runs)."
            if scored
            else ""
        ),
        "- Unigram level (loss of the training split's token frequencies on validation): "
        + (
            f"{unigram:.3f} nats (ppl {math.exp(unigram):,.0f})."
            if isinstance(unigram, int | float)
            else "n/a."
        ),
    ]
    if stopping:
        lines.append(
            "- Early stopping on the periodic validation estimate: a seed run keeps the weights of its best "
            "estimate (the table's kept step, mean over seeds) and stops once that is a patience's worth of "
            "estimates old (stopped at); its test score is of the kept weights."
        )
    extra = ([] if one_budget else ["steps (warmup)"]) + (["kept step / stopped at"] if stopping else [])
    header = ["variant", "overrides", *extra, "lr grid", "chosen lr", "grid runs", "seed runs"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for v in study.variants:
        overrides = (
            ", ".join(f"`{k}={json.dumps(val)}`" for k, val in v.get("overrides", {}).items()) or "none"
        )
        if v.get("lr_from"):
            grid = f"none (reuses {v['lr_from']}'s)"
        elif v.get("lr"):
            grid = "none (fixed in advance)"
        else:
            grid = ", ".join(map(fmt_lr, v["lr_grid"]))
        n_lr = len(study.entries(variant=v["label"], phase="lr"))
        seed_runs = list(study.phase2(v["label"]).values())
        cells = [v["label"], overrides]
        if not one_budget:
            cells.append(f"{v['budget']['steps']:,} ({v['budget']['warmup_steps']:,})")
        if stopping:
            cells.append(stopping_cell(seed_runs))
        cells += [grid, fmt_lr(v.get("chosen_lr")), str(n_lr), str(len(seed_runs))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def stopping_cell(runs: Sequence[Run]) -> str:
    """Mean kept step and mean step where training stopped; runs that never stopped count their last step."""
    if not runs or any(not isinstance(r.summary.get("step"), int) for r in runs):
        return "n/a"
    kept = statistics.fmean(r.summary["step"] for r in runs)
    stopped = statistics.fmean(r.summary.get("early_stop/stopped_at_step") or r.summary["step"] for r in runs)
    return f"{kept:,.0f} / {stopped:,.0f}"


def single_run_lines(study: Study) -> list[str]:
    """Per variant, how wide one run's bootstrap interval over the scored split is, beside how far its seeds
    spread: the two sources of uncertainty a single-run comparison would mix."""
    test = study.spec["test_metric"]
    low, high = test.replace("/loss", "/loss_low"), test.replace("/loss", "/loss_high")
    rows = []
    for v in study.variants:
        runs = [r.summary for r in study.phase2(v["label"]).values() if high in r.summary]
        if not runs:
            continue
        half = [(r[high] - r[low]) / 2 for r in runs]
        losses = [r[test] for r in runs]
        spread = f"{stats.tstd(losses):.4f}" if len(losses) > 1 else "n/a"
        rows.append(
            f"| {v['label']} | {len(runs)} | {sum(losses) / len(losses):.4f} | "
            f"{sum(half) / len(half):.4f} [{min(half):.4f}, {max(half):.4f}] | {spread} |"
        )
    if not rows:
        return []
    blocks = {r.summary.get(test.replace("/loss", "/blocks")) for r in study.runs.values()} - {None}
    return [
        f"Each seed run's `{test}` is its final checkpoint scored on the whole split"
        + (f" ({', '.join(map(str, sorted(blocks)))} blocks of contiguous text)" if blocks else "")
        + ", with a 95% percentile bootstrap over blocks: how far the score would move on another text "
        "of the same size. It leaves out seed-to-seed variation, which the last column shows. The paired "
        "comparisons above score every variant on the same text, so that variation is shared and mostly "
        "cancels in their differences; their intervals are over seeds only.",
        "",
        "| variant | seeds | mean test loss | 95% bootstrap half-width of one run, mean [min, max] "
        "| SD over seeds |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ]


def unfinished_lines(study: Study) -> list[str]:
    """The runs the statistics leave out, and why."""
    lines = []
    for e in study.spec["runs"]:
        where = f"- `{e['name']}` ({e.get('phase')})"
        test = study.spec["test_metric"] if e.get("phase") == "seeds" else None
        if e.get("status") != "finished":
            lines.append(f"{where}: {e.get('status', 'not started')}")
        elif e["name"] not in study.runs:
            lines.append(f"{where}: finished, but its run directory is missing")
        elif is_grid_point(e) and e not in study.entries():
            # only a grid point needs the selection metric (a whole split scores only those)
            lines.append(f"{where}: finished without `{study.spec['select_metric']}`")
        elif test and e not in study.entries(test):
            lines.append(f"{where}: finished without `{test}`")
    return lines


def lr_points(study: Study) -> dict[str, list[tuple[float, float, float]]]:
    metric = study.spec["select_metric"]
    return {
        v["label"]: [
            (float(e["lr"]), float(e.get("fraction", 1.0)), float(study.runs[e["name"]].summary[metric]))
            for e in study.grid(variant=v["label"])
        ]
        for v in study.variants
    }


DIAGNOSTICS = {
    "diag/ln_input_rms/layer_": (
        "LayerNorm input RMS",
        "RMS of the first LayerNorm's input (log scale)",
    ),
    "diag/attn_ratio/layer_": (
        "attention branch / residual",
        "attention output / block input, RMS (log scale)",
    ),
}
"""Per-block activation figures that ``minigpt.diagnostics`` logs: key prefix -> (caption, axis label)."""


def split_seed_curves(study: Study, key: str) -> dict[str, list[Curve]]:
    """``key`` for each seed of every variant whose seeds split, some training and some not, by the success
    rule that covers it (see ``rule_covering``): a mean over such seeds describes no run, and a band around it
    suggests a spread no run shows."""
    split = {}
    for v in study.variants:
        runs = [run for _, run in sorted(study.phase2(v["label"]).items(), key=lambda item: str(item[0]))]
        rule = rule_covering(study, {v["label"]})
        if rule is not None and 0 < sum(trains(run, rule) for run in runs) < len(runs):
            curves = [mean_curve([run], key) for run in runs]
            split[v["label"]] = [c for c in curves if c is not None]
    return {label: curves for label, curves in split.items() if curves}


def layer_curves(runs: Sequence[Run], prefix: str = "grad_norm/layer_") -> dict[int, Curve]:
    keys = sorted({k for r in runs for h in r.history for k in h if k.startswith(prefix)})
    curves = {int(k.rsplit("_", 1)[1]): mean_curve(runs, k, log=True) for k in keys}
    return {layer: c for layer, c in sorted(curves.items()) if c is not None}


def norm_questions(study: Study) -> list[dict[str, Any]]:
    """Questions whose variants' runs differ in where the LayerNorm sits (their per-layer gradients are
    shown), less those whose variants an earlier one already shows."""
    chosen: list[dict[str, Any]] = []
    for q in study.spec["questions"]:
        labels = {q["baseline"], *q["variants"]}
        positions = {r.config.get("model.norm_position") for x in labels for r in study.phase2(x).values()}
        if len(positions) > 1 and not any(labels <= {c["baseline"], *c["variants"]} for c in chosen):
            chosen.append(q)
    return chosen


def write_figures(study: Study, out: Path) -> list[tuple[str, Path | None]]:
    colours = study.colours()
    unigram = study.spec.get("unigram_loss")
    unigram = unigram if isinstance(unigram, int | float) else None
    chosen = {
        v["label"]: v["chosen_lr"] for v in study.variants if isinstance(v.get("chosen_lr"), int | float)
    }
    figures = [
        (
            "Learning-rate sensitivity (phase 1)",
            plots.plot_lr_sensitivity(
                lr_points(study),
                chosen,
                colours,
                unigram,
                study.spec["select_metric"],
                out / "lr_sensitivity.png",
            ),
        )
    ]
    val_curves = {
        v["label"]: mean_curve(list(study.phase2(v["label"]).values()), "val/loss") for v in study.variants
    }
    each_seed = split_seed_curves(study, "val/loss")
    figures.append(
        (
            "Validation loss during training (phase 2)",
            plots.plot_loss_curves(
                val_curves,
                colours,
                unigram,
                "validation loss, periodic estimate (nats/token)",
                "Validation loss at each variant's chosen lr: mean and 95% CI over seeds"
                + ("\nwhere a variant's seeds split, training and not: each seed" if each_seed else ""),
                out / "val_loss.png",
                each_seed,
            ),
        )
    )
    for q in norm_questions(study):
        labels = [q["baseline"], *q["variants"]]
        per_variant = {x: layer_curves(list(study.phase2(x).values())) for x in labels}
        figures.append(
            (
                f"Per-layer gradient norms ({q['name']})",
                plots.plot_layer_grad_curves(
                    per_variant,
                    f"Per-block gradient norm at the chosen lr, geometric mean over seeds ({q['name']})",
                    out / f"layer_grad_norms_{q['name']}.png",
                ),
            )
        )
        for prefix, (caption, ylabel) in DIAGNOSTICS.items():
            per_variant = {x: layer_curves(list(study.phase2(x).values()), prefix) for x in labels}
            slug = prefix.split("/")[1]
            figures.append(
                (
                    f"{caption[0].upper()}{caption[1:]} per block ({q['name']})",
                    plots.plot_layer_grad_curves(
                        per_variant,
                        f"{caption} per block at the chosen lr, geometric mean over seeds ({q['name']})",
                        out / f"{slug}_{q['name']}.png",
                        ylabel,
                    ),
                )
            )
    return figures


STATS_TEXT = (
    "Each question is answered on the test split by the phase-2 runs (each variant at its own chosen lr). "
    "Perplexities are exp(mean test loss) with the 95% t-interval of the mean loss exponentiated. The "
    "ratio is exp(mean paired difference in test loss, variant - baseline at the same seed) with its "
    "paired 95% t-interval. p-values are two-sided: the paired t-test and the exact sign-flip permutation "
    f"test (all 2^n sign patterns of the n differences; n/a above n = {MAX_EXACT}); in brackets, "
    "Holm-adjusted over this question's comparisons only (one family per question). The SD of the paired "
    "differences is this comparison's own, with its chi-square 95% interval; the MDE is the smallest "
    f"perplexity ratio a paired t-test over these seeds detects with {POWER:.0%} power at alpha "
    f"{ALPHA:g}, at that SD (in brackets, at the ends of its interval)."
)
EQUIVALENCE_TEXT = (
    "Equivalence by two one-sided paired t-tests (TOST) against ±log(1 + margin): equivalent when the "
    "Holm-adjusted TOST p is below 0.05 (the 90% interval lies inside the margin), not equivalent when the "
    "whole 90% interval lies outside it, otherwise inconclusive."
)
SUCCESS_TEXT = (
    "A run trains when it meets the rule fixed in the study file; success counts are compared with the "
    "baseline's by Fisher's exact test (two-sided, Holm over this question), and perplexity is shown among "
    "the runs that trained."
)


def question_lines(study: Study, question: dict[str, Any]) -> list[str]:
    result = analyse_question(study, question)
    kind = question["kind"]
    lines = [
        f"### {question['title']}",
        "",
        f"`{question['name']}`: {kind} question, baseline {question['baseline']}.",
    ]
    if kind == "equivalence":
        lines[-1] += (
            f" Margin ±{question['margin']:.1%} in perplexity, fixed in the study file. {EQUIVALENCE_TEXT}"
        )
    if kind == "success":
        lines[-1] += f" Rule: {rule_text(result.rule)}. {SUCCESS_TEXT}"
    elif result.rule is not None:
        lines[-1] += f" Split outcomes are detected with the rule {rule_text(result.rule)}."
    lines += [
        "",
        *question_table(result),
        "",
        *baseline_lr_lines(at_baseline_lr(study, question)),
    ]
    lines += ["Verdict:", "", *verdict_lines(result), ""]
    return lines


def render(study: Study, out: Path, command: str) -> str:
    title = study.spec.get("study", "study")
    lines = [f"# Ablation study: {title}", "", f"Generated from the study records by `{command}`.", ""]
    lines += ["## Setup", "", *setup_lines(study), ""]
    unfinished = unfinished_lines(study)
    if unfinished:
        lines += ["## Runs left out", "", *unfinished, ""]
    lines += ["## Questions", "", STATS_TEXT, ""]
    for q in study.spec["questions"]:
        lines += question_lines(study, q)
    single = single_run_lines(study)
    if single:
        lines += ["## One run's interval against the spread over seeds", "", *single, ""]
    lines += ["## Plots", ""]
    for caption, path in write_figures(study, out):
        if path is not None:
            lines += [f"### {caption}", "", f"![{caption}]({path.name})", ""]
    return "\n".join(lines)


def copy_study_records(study_dir: Path, records: Path) -> int:
    """``study.json`` and the config, summary and metrics (no checkpoints, no W&B folders) of each run it
    records; other run directories in the study's folder (copied in from another study, say) stay behind."""
    state = (study_dir / "study.json").read_bytes()
    names = {r["name"] for r in json.loads(state)["runs"]}
    n = copy_records(study_dir / "runs", records / "runs", names)
    atomic_write_bytes(records / "study.json", state)
    return n


def write_study_report(study_dir: Path, out_dir: Path, records: Path | None = None) -> Path:
    """Write ``report.md`` and its PNGs into ``out_dir`` (from a copy in ``records`` when given); return
    the report's path."""
    study_dir, out_dir = Path(study_dir), Path(out_dir)
    if records is not None:
        load_study(study_dir)  # a broken study fails before anything is copied
        copy_study_records(study_dir, Path(records))
        study_dir = Path(records)
    study = load_study(study_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(
        [
            "python -m analysis.study_report",
            shlex.quote(display_path(study_dir)),
            "--out",
            shlex.quote(display_path(out_dir)),
        ]
    )
    report = out_dir / "report.md"
    atomic_write_bytes(report, render(study, out_dir, command).encode())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.study_report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("study_dir", help="the folder the study command wrote (study.json and runs/)")
    parser.add_argument("--out", required=True, help="folder for report.md and the plots")
    parser.add_argument(
        "--records", default="", help="first copy the study's records here, then report from them"
    )
    add_artifact_option(parser)
    args = parser.parse_args(argv)
    try:
        path = write_study_report(
            Path(args.study_dir), Path(args.out), Path(args.records) if args.records else None
        )
    except (FileNotFoundError, RunsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(
            f"error: study.json lacks the field {e}; was it written by python -m minigpt.study?",
            file=sys.stderr,
        )
        return 2
    print(f"wrote {path}")
    if args.log_artifact:
        log_report_artifact(args.out, args.log_artifact)
    return 0


if __name__ == "__main__":
    sys.exit(main())
