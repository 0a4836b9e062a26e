"""Write a Markdown report of an ablation suite: setup, results with paired and Welch tests, plots.

    python -m analysis.report runs/sweeps/ablations-cpu --records reports/ablations-cpu-sweep/runs \\
        --out reports/ablations-cpu-sweep --baseline model.norm_position=pre
    python -m analysis.report reports/ablations-cpu-sweep/runs --out reports/ablations-cpu-sweep \\
        --baseline model.norm_position=pre            # the same report, from the committed records
    python -m analysis.report --wandb ENTITY/PROJECT --out reports/x --group-by model.n_head

Runs are grouped into variants by the ``--group-by`` config keys (default: every key whose value differs
between runs, seeds and bookkeeping left out); seeds are what the intervals are over. The baseline takes
the ``--baseline key=value`` pairs and, for other keys, the most common value. Only finished runs enter the
statistics; the report lists the others. ``report.md`` holds no timestamps or absolute paths, so the same
records give the same file.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis import plots
from analysis.records import copy_records
from analysis.runs import Run, RunsError, load_runs, load_sweep_state, load_wandb_runs, varying_keys
from analysis.stats import METRIC, Comparison, compare, detectable_difference, holm, mean_ci
from analysis.variants import Variant, make_variants
from minigpt.storage import atomic_write_bytes

TEST_METRIC = "final_test/loss"
QUIET_LOAD = 3.0
"""Throughput is shown only when every run's 1-minute load average, at its start and end, was at most this:
the suite's own two 1-thread runs load a machine to about 2."""


@dataclass
class Analysis:
    variants: list[Variant]
    """Finished runs only; the baseline first."""
    baseline: Variant
    unfinished: dict[str, list[Run]]
    """Variant label -> its runs that did not finish (failed, killed, still running, never started)."""
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    """Variant label -> its comparison with the baseline on validation loss."""
    loads: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Run name -> 1-minute load average at its start and end, from the sweep's ``sweep.json``."""
    notes: list[str] = field(default_factory=list)
    """Things a reader must know: runs left out and why, metrics missing."""


def is_complete(run: Run) -> bool:
    return run.status == "finished" and isinstance(run.summary.get(METRIC), int | float)


def analyse(
    runs: Sequence[Run],
    keys: Sequence[str] | None = None,
    baseline: dict[str, str] | None = None,
    allow_mixed_budgets: bool = False,
    loads: dict[str, tuple[float, float]] | None = None,
) -> Analysis:
    """Variants of the finished runs (baseline first), their comparisons with the baseline, and notes."""
    keys = list(keys) if keys else varying_keys(runs)
    all_variants = make_variants(runs, keys, baseline)
    if not keys:  # one run, or seeds of one configuration: described, with nothing to compare it to
        all_variants[0].label = str(runs[0].config.get("name") or "all runs")
    unfinished = {v.label: [r for r in v.runs if not is_complete(r)] for v in all_variants}
    variants = [v for v in all_variants if any(is_complete(r) for r in v.runs)]
    for v in variants:
        v.runs = [r for r in v.runs if is_complete(r)]
    notes = [f"{v.label}: no finished run, left out." for v in all_variants if v not in variants]
    if not variants or not variants[0].is_baseline:
        label = all_variants[0].label if all_variants else "baseline"
        raise RunsError(f"the baseline ({label}) has no finished run with {METRIC}; nothing to compare with")
    budgets = {r.token_budget for v in variants for r in v.runs}
    if len(budgets) > 1:
        per_variant = "; ".join(f"{v.label}: {sorted({r.token_budget for r in v.runs})}" for v in variants)
        if not allow_mixed_budgets:
            raise RunsError(
                f"the runs were configured for different training-token budgets ({per_variant}); a "
                "comparison at unequal budgets confounds the variant with training length. Pass "
                "--allow-mixed-budgets to compare them anyway, or select runs with one budget."
            )
        notes.append(
            f"Runs have different training-token budgets (allowed by --allow-mixed-budgets): {per_variant}."
        )
    if not keys:
        notes.append("The runs share one configuration: they are described, not compared.")
    if not any(TEST_METRIC in r.summary for v in variants for r in v.runs):
        notes.append("The runs have no test split: only validation perplexity is reported.")
    a = Analysis(variants, variants[0], unfinished, loads=loads or {}, notes=notes)
    base = {r.seed: r.summary[METRIC] for r in a.baseline.runs}
    for v in variants[1:]:
        a.comparisons[v.label] = compare({r.seed: r.summary[METRIC] for r in v.runs}, base)
    return a


# ------------------------------------------------------------------------------------------------ formatting


def fmt_p(p: float) -> str:
    """A p-value as a reader wants it: ``< 0.001`` rather than ``0.000``."""
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_num(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


def ppl_interval(losses: Sequence[float]) -> str:
    """Perplexity of the mean loss with the 95% interval of the mean loss, exponentiated."""
    e = mean_ci(losses)
    if e.n == 0:
        return "n/a"
    if math.isnan(e.half_width):
        return f"{math.exp(e.mean):,.1f} (n = 1)"
    return f"{math.exp(e.mean):,.1f} [{math.exp(e.low):,.1f}, {math.exp(e.high):,.1f}]"


def ratio_text(c: Comparison) -> str:
    if math.isnan(c.ci.half_width):
        return f"{math.exp(c.ci.mean):.3f}"
    return f"{math.exp(c.ci.mean):.3f} [{math.exp(c.ci.low):.3f}, {math.exp(c.ci.high):.3f}]"


def results_table(a: Analysis) -> list[str]:
    labels = [v.label for v in a.variants[1:]]
    paired = dict(zip(labels, holm([a.comparisons[x].paired_p for x in labels]), strict=True))
    welch = dict(zip(labels, holm([a.comparisons[x].welch_p for x in labels]), strict=True))
    has_test = any(TEST_METRIC in r.summary for v in a.variants for r in v.runs)
    head = ["variant", "finished/runs", "val ppl [95% CI]"]
    head += ["test ppl [95% CI]"] if has_test else []
    head += ["val ppl ratio to baseline [95% CI]", "paired t p (Holm)", "Welch p (Holm)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for v in a.variants:
        total = len(v.runs) + len(a.unfinished.get(v.label, []))
        cells = [f"**{v.label}**" if v.is_baseline else v.label, f"{len(v.runs)}/{total}"]
        cells.append(ppl_interval([r.summary[METRIC] for r in v.runs]))
        if has_test:
            cells.append(ppl_interval([r.summary[TEST_METRIC] for r in v.runs if TEST_METRIC in r.summary]))
        if v.is_baseline:
            cells += ["1", "", ""]
        else:
            c = a.comparisons[v.label]
            cells += [
                ratio_text(c),
                f"{fmt_p(c.paired_p)} ({fmt_p(paired[v.label])})",
                f"{fmt_p(c.welch_p)} ({fmt_p(welch[v.label])})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_sd(a: Analysis) -> float:
    """The seed-to-seed SD of a paired difference in validation loss, pooled over the comparisons."""
    base = {r.seed: r.summary[METRIC] for r in a.baseline.runs}
    variances, dofs = [], []
    for v in a.variants[1:]:
        diffs = [r.summary[METRIC] - base[r.seed] for r in v.runs if r.seed in base]
        if len(diffs) >= 2:
            variances.append(np.var(diffs, ddof=1) * (len(diffs) - 1))
            dofs.append(len(diffs) - 1)
    return math.sqrt(sum(variances) / sum(dofs)) if dofs else math.nan


def detectable_table(a: Analysis, seeds: Sequence[int] = (3, 5, 10)) -> list[str]:
    """The smallest perplexity ratio a paired test detects, from the measured paired SD."""
    sd = paired_sd(a)
    if math.isnan(sd):
        return ["Not computable: no variant shares two or more seeds with the baseline."]
    lines = [
        f"Pooled SD of the per-seed difference in validation loss (variant - baseline, same seed): {sd:.4f} "
        "nats. The smallest perplexity ratio a two-sided paired t-test would detect at p < 0.05 (just "
        "significant), and with 80% power:",
        "",
        "| seeds | just significant at p < 0.05 | detected with 80% power |",
        "| --- | --- | --- |",
    ]
    for n in seeds:
        just = math.exp(detectable_difference(sd, n))
        powered = math.exp(detectable_difference(sd, n, power=0.8))
        lines.append(f"| {n} | {just:.3f} (±{just - 1:.1%}) | {powered:.3f} (±{powered - 1:.1%}) |")
    return lines


def quiet_machine(a: Analysis, threshold: float) -> tuple[bool, str]:
    """Whether every analysed run started and ended with the machine's load at most ``threshold``."""
    names = [r.name for v in a.variants for r in v.runs]
    missing = [n for n in names if n not in a.loads]
    if missing:
        return False, (
            f"the sweep recorded no load average for {len(missing)} of {len(names)} "
            "runs, so whether the machine was quiet is unknown"
        )
    peak = max(max(a.loads[n]) for n in names)
    if peak > threshold:
        return False, (
            f"the machine was busy (1-minute load average up to {peak:.2f}, above "
            f"{threshold:g}), so tokens/s would measure the other work"
        )
    return (
        True,
        f"measured on a quiet machine: 1-minute load average at most {peak:.2f} at every run's start and end",
    )


def throughput_table(a: Analysis) -> list[str]:
    lines = ["| variant | tokens/s [95% CI] | train seconds (mean) |", "| --- | --- | --- |"]
    for v in a.variants:
        rates = [r.summary["tokens_per_sec"] for r in v.runs if "tokens_per_sec" in r.summary]
        e = mean_ci(np.log(rates)) if rates else mean_ci([])
        seconds = mean_ci([r.summary.get("train_seconds", math.nan) for r in v.runs]).mean
        cell = "n/a" if e.n == 0 else f"{math.exp(e.mean):,.0f}"
        if e.n > 1:
            cell += f" [{math.exp(e.low):,.0f}, {math.exp(e.high):,.0f}]"
        lines.append(f"| {v.label} | {cell} | {fmt_num(seconds, 0)} |")
    return lines


def unfinished_lines(a: Analysis) -> list[str]:
    lines = []
    for label, runs in a.unfinished.items():
        for r in runs:
            last = next((h for h in reversed(r.history) if "train/loss" in h), {})
            reason = r.status if r.status != "finished" else f"finished without {METRIC}"
            lines.append(
                f"- {label}: run `{r.name}` is {reason} (last logged step {last.get('step', 'none')}, "
                f"train loss {fmt_num(last.get('train/loss', math.nan), 3)})"
            )
    return lines


def count(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def setup_lines(a: Analysis) -> list[str]:
    c = a.baseline.runs[0].config
    s = a.baseline.runs[0].summary
    seeds = sorted({r.seed for v in a.variants for r in v.runs}, key=str)
    per_step = c["train.batch_size"] * c["model.block_size"]
    model = (
        f"{c['model.n_layer']} layers, width {c['model.n_embd']}, {c['model.n_head']} heads, context "
        f"{c['model.block_size']}, {c['model.norm_position']}-LN, "
        f"{'tied' if c['model.tie_embeddings'] else 'untied'} embeddings, dropout {c['model.dropout']}"
    )
    test = f" and {count(s['final_test/tokens'])} test" if "final_test/tokens" in s else ""
    runs = sum(len(v.runs) for v in a.variants)
    steps = f"{c['train.batch_size']} sequences x {c['model.block_size']} tokens"
    if c.get("train.max_minutes"):  # the clock, not the step count, decides how much each run sees
        seen = sorted({r.summary["tokens"] for v in a.variants for r in v.runs if "tokens" in r.summary})
        if len(seen) > 1:
            amount = f", so a faster variant sees more tokens: {count(seen[0])} to {count(seen[-1])} per run"
        else:
            amount = f": {count(seen[0]) if seen else 'n/a'} tokens"
        data = (
            f"- Data: {c['data.dataset']}; each run trains for {c['train.max_minutes']:g} minutes "
            f"(`train.max_minutes`, evaluation excluded) in steps of {steps}{amount}."
        )
    else:
        data = (
            f"- Data: {c['data.dataset']}; {c['train.max_steps']:,} steps x {steps} = "
            f"{c['train.max_steps'] * per_step:,} training tokens per run."
        )
    return [
        f"- {len(a.variants)} variants, {runs} finished runs, seeds {', '.join(map(str, seeds))}; each "
        "variant is labelled by what it changes from the baseline.",
        f"- Baseline model: {model}; {count(c.get('_run.params'))} parameters "
        f"({count(c.get('_run.params_non_embedding'))} non-embedding).",
        data,
        f"- Optimiser: AdamW, peak lr {c['train.lr']:g}, linear warmup {c['train.warmup_steps']} steps, "
        f"cosine to {c['train.min_lr_ratio']:g} x lr, weight decay {c['train.weight_decay']:g}, gradient "
        f"clipping {c['train.grad_clip']:g}.",
        f"- Final evaluation: the first {count(s.get('final_val/tokens'))} validation{test} tokens, "
        f"non-overlapping windows of context {s.get('final_val/context')} "
        f"(stride {s.get('final_val/stride')}).",
        f"- Hardware: {c.get('_run.device', 'n/a')}, {c.get('_run.threads') or c['train.threads']} "
        "thread(s) per run, "
        f"precision {c.get('_run.precision', 'n/a')}.",
    ]


STATS_TEXT = (
    "Perplexities are exp(mean validation loss) over seeds, with the 95% t-interval of the mean loss "
    "exponentiated. Tests are on validation loss (log-perplexity), two-sided, against the baseline. Runs "
    "that share a seed share the data order, so the **paired t-test** (scipy.stats.ttest_rel over the shared "
    "seeds) is the primary test; **Welch's t-test** (scipy.stats.ttest_ind, unequal variances) ignores the "
    "pairing. The ratio is exp(mean paired difference) with its paired 95% interval. In brackets: "
    "Holm-adjusted p-values over this table's comparisons, one family per test."
)


def write_report(
    a: Analysis, out_dir: str | Path, title: str, command: str, quiet_load: float = QUIET_LOAD
) -> Path:
    """Write ``report.md`` and its PNG plots into ``out_dir``; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet, quiet_text = quiet_machine(a, quiet_load)
    compared = len(a.variants) > 1
    if not compared:  # one variant: its perplexity is in the table, and there is no ratio to plot
        (out / "final_ppl.png").unlink(missing_ok=True)
    figures = [
        ("Final validation perplexity", plots.plot_final(a, out / "final_ppl.png") if compared else None),
        (
            "Validation perplexity during training",
            plots.plot_curves(
                a.variants, "val/ppl", "validation perplexity", out / "val_ppl.png", log_y=True
            ),
        ),
        (
            "Training loss",
            plots.plot_curves(a.variants, "train/loss", "training loss (nats/token)", out / "train_loss.png"),
        ),
        (
            "Gradient norm",
            plots.plot_curves(
                a.variants,
                "train/grad_norm",
                "gradient norm before clipping",
                out / "grad_norm.png",
                log_y=True,
            ),
        ),
        ("Per-layer gradient norm", plots.plot_layer_grad_norms(a.variants, out / "layer_grad_norms.png")),
    ]
    if quiet:
        figures.append(("Throughput", plots.plot_throughput(a.variants, out / "throughput.png", quiet_text)))
    else:
        (out / "throughput.png").unlink(missing_ok=True)
    lines = [f"# {title}", "", f"Generated from the run records by `{command}`.", ""]
    lines += ["## Setup", "", *setup_lines(a), ""]
    if a.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in a.notes], ""]
    lines += ["## Results", "", STATS_TEXT, "", *results_table(a), ""]
    lines += ["## Detectable differences", "", *detectable_table(a), ""]
    unfinished = unfinished_lines(a)
    if unfinished:
        lines += [
            "## Runs that did not finish",
            "",
            "They are left out of the statistics above.",
            "",
            *unfinished,
            "",
        ]
    lines += ["## Throughput", ""]
    lines += (
        [f"Throughput {quiet_text}.", "", *throughput_table(a)] if quiet else [f"Not shown: {quiet_text}."]
    )
    lines += ["", "## Plots", ""]
    for caption, path in figures:
        if path is not None:
            lines += [f"### {caption}", "", f"![{caption}]({path.name})", ""]
    report = out / "report.md"
    atomic_write_bytes(report, "\n".join(lines).encode())
    return report


def parse_baseline(items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        if "=" not in item:
            raise RunsError(f"--baseline takes key=value pairs such as model.norm_position=pre, got {item!r}")
        key, value = item.split("=", 1)
        pairs[key] = value
    return pairs


def sweep_loads(roots: Sequence[str | Path]) -> dict[str, tuple[float, float]]:
    """Run name -> (load at start, load at end) from each root's ``sweep.json``, where recorded."""
    loads = {}
    for root in roots:
        state = load_sweep_state(root) or {}
        for r in state.get("runs", []):
            if isinstance(r.get("load_start"), int | float) and isinstance(r.get("load_end"), int | float):
                loads[r["name"]] = (float(r["load_start"]), float(r["load_end"]))
    return loads


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it, so the report names no home."""
    relative = os.path.relpath(Path(path).resolve(), Path.cwd())
    return str(path) if relative.startswith("..") else relative


def add_artifact_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-artifact",
        metavar="PROJECT",
        default="",
        help="also log the report folder as a W&B artifact (type report) of a short run in this project; "
        "W&B's usual mode rules apply (offline without credentials, then `wandb sync`)",
    )


def log_report_artifact(out: str | Path, project: str) -> None:
    """The report folder as a W&B artifact named after it, so a team's reports live beside their runs."""
    from minigpt.tracking import log_artifact_run

    name = f"{Path(out).resolve().name}-report"
    where = log_artifact_run(Path(out), name, "report", project)
    print(f"logged {display_path(out)} as the W&B artifact {name}: {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="*", help="folders holding run directories (e.g. a sweep folder)")
    parser.add_argument("--wandb", default="", help="read runs from this W&B project (entity/project)")
    parser.add_argument(
        "--group-by", nargs="+", default=[], help="dotted config keys (default: those that vary)"
    )
    parser.add_argument("--baseline", nargs="*", default=[], help="key=value pairs naming the baseline")
    parser.add_argument("--out", required=True, help="folder for report.md and the plots")
    parser.add_argument(
        "--records", default="", help="first copy the runs' records here, then report from them"
    )
    parser.add_argument("--title", default="Ablation report")
    parser.add_argument(
        "--allow-mixed-budgets", action="store_true", help="compare runs of unequal token budgets"
    )
    parser.add_argument(
        "--quiet-load", type=float, default=QUIET_LOAD, help="highest load average called quiet"
    )
    add_artifact_option(parser)
    args = parser.parse_args(argv)
    if not args.run_dirs and not args.wandb:
        parser.error("give run folders or --wandb ENTITY/PROJECT")
    if args.records and len(args.run_dirs) != 1:
        parser.error("--records copies one run folder: give exactly one")
    try:
        roots = args.run_dirs
        if args.records:
            print(f"copied the records of {copy_records(roots[0], args.records)} runs to {args.records}")
            roots = [args.records]
        runs = load_runs(roots) if roots else []
        if args.wandb:
            runs += load_wandb_runs(args.wandb)
        baseline = parse_baseline(args.baseline)
        analysis = analyse(runs, args.group_by, baseline, args.allow_mixed_budgets, sweep_loads(roots))
    except (FileNotFoundError, RunsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = ["python -m analysis.report", *map(display_path, roots), "--out", display_path(args.out)]
    command += ["--group-by", *args.group_by] if args.group_by else []
    command += ["--baseline", *args.baseline] if args.baseline else []
    command += ["--title", args.title] if args.title != parser.get_default("title") else []
    command += ["--allow-mixed-budgets"] if args.allow_mixed_budgets else []
    command += ["--quiet-load", f"{args.quiet_load:g}"] if args.quiet_load != QUIET_LOAD else []
    text = " ".join(command[:1] + [shlex.quote(c) for c in command[1:]])
    print(f"wrote {write_report(analysis, args.out, args.title, text, args.quiet_load)}")
    for note in analysis.notes:
        print(f"note: {note}")
    if args.log_artifact:
        log_report_artifact(args.out, args.log_artifact)
    return 0


if __name__ == "__main__":
    sys.exit(main())
