"""Write a Markdown report of a set of runs: plots, per-variant tables, and comparisons with a baseline.

    python -m analysis.report runs/sweeps/ablations-cpu --out reports/ablations-cpu \\
        --group-by model.norm_position train.warmup_steps model.tie_embeddings model.n_head
    python -m analysis.report --wandb ENTITY/PROJECT --out reports/x --group-by model.n_head

Runs are grouped by the ``--group-by`` config keys (seeds, which differ within a group, are what the
confidence intervals are over). The baseline is ``--baseline key=value ...`` or, by default, the group whose
value for every key is that key's most common value. Only finished runs enter the statistics; the tables
count the others.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis import plots
from analysis.runs import Run, Variant, load_runs, load_wandb_runs, make_variants
from analysis.stats import mean_ci, welch

FINAL_METRICS = ("final_val/ppl", "final_test/ppl")


@dataclass
class Analysis:
    variants: list[Variant]
    baseline: Variant
    unfinished: dict[str, list[Run]]
    """Variant label -> its runs that did not finish (failed, diverged or still running)."""


def pick_baseline(variants: Sequence[Variant], wanted: dict[str, str] | None) -> Variant:
    if wanted:
        matches = [v for v in variants if all(str(v.values[k]) == val for k, val in wanted.items())]
        if len(matches) != 1:
            raise ValueError(f"--baseline {wanted} matches {len(matches)} variants, not one")
        return matches[0]
    keys = list(variants[0].values)
    mode = {k: Counter(str(v.values[k]) for v in variants).most_common(1)[0][0] for k in keys}
    matches = [v for v in variants if all(str(v.values[k]) == mode[k] for k in keys)]
    if not matches:
        raise ValueError(f"no variant has the most common value of every key ({mode}); pass --baseline")
    return matches[0]


def analyse(runs: Sequence[Run], keys: Sequence[str], baseline: dict[str, str] | None = None) -> Analysis:
    """Variants of the finished runs (baseline first), and the unfinished runs of each variant."""
    all_variants = make_variants(runs, keys)
    variants = [
        Variant(v.values, [r for r in v.runs if r.status == "finished"], v.label, v.colour)
        for v in all_variants
    ]
    unfinished = {v.label: [r for r in v.runs if r.status != "finished"] for v in all_variants}
    variants = [v for v in variants if v.runs]
    if not variants:
        raise ValueError("no finished runs to analyse")
    base = pick_baseline(variants, baseline)
    variants = [base] + [v for v in variants if v is not base]
    return Analysis(variants, base, unfinished)


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


def _ci(values: Sequence[float], digits: int = 2) -> str:
    e = mean_ci(values)
    return f"{_fmt(e.mean, digits)} ± {_fmt(e.half_width, digits)}"


def final_table(a: Analysis) -> list[str]:
    head = "| variant | finished/runs | " + " | ".join(f"{m} (mean ± 95% CI)" for m in FINAL_METRICS) + " |"
    lines = [head, "|" + " --- |" * (2 + len(FINAL_METRICS))]
    for v in a.variants:
        total = len(v.runs) + len(a.unfinished.get(v.label, []))
        cells = [_ci([r.summary[m] for r in v.runs if m in r.summary]) for m in FINAL_METRICS]
        lines.append(f"| {v.label} | {len(v.runs)}/{total} | " + " | ".join(cells) + " |")
    return lines


def comparison_table(a: Analysis) -> list[str]:
    cols = [f"Δ {m} (relative) | p ({m})" for m in FINAL_METRICS]
    lines = [
        "| variant vs baseline | " + " | ".join(cols) + " |",
        "|" + " --- |" * (1 + 2 * len(FINAL_METRICS)),
    ]
    for v in a.variants[1:]:
        cells = []
        for m in FINAL_METRICS:
            baseline = [r.summary[m] for r in a.baseline.runs]
            c = welch([r.summary[m] for r in v.runs], baseline)
            relative = c.difference / mean_ci(baseline).mean
            cells += [f"{c.difference:+,.2f} ({relative:+.1%})", _fmt(c.p_value, 3)]
        lines.append(f"| {v.label} | " + " | ".join(cells) + " |")
    return lines


def throughput_table(a: Analysis) -> list[str]:
    lines = ["| variant | tokens/s (mean ± 95% CI) | train seconds (mean) |", "| --- | --- | --- |"]
    for v in a.variants:
        seconds = mean_ci([r.summary.get("train_seconds", math.nan) for r in v.runs]).mean
        lines.append(
            f"| {v.label} | {_ci([r.summary['tokens_per_sec'] for r in v.runs], 0)} | {_fmt(seconds, 0)} |"
        )
    return lines


def unfinished_lines(a: Analysis) -> list[str]:
    lines = []
    for label, runs in a.unfinished.items():
        for r in runs:
            last = next((h for h in reversed(r.history) if "train/loss" in h), {})
            lines.append(
                f"- {label}: run `{r.name}` is {r.status} (last logged step {last.get('step', 'none')}, "
                f"train loss {_fmt(last.get('train/loss', math.nan), 3)})"
            )
    return lines


def setup_lines(a: Analysis) -> list[str]:
    c = a.baseline.runs[0].config
    s = a.baseline.runs[0].summary
    seeds = sorted({r.config["train.seed"] for v in a.variants for r in v.runs})
    tokens = c["train.max_steps"] * c["train.batch_size"] * c["model.block_size"]
    model = (
        f"{c['model.n_layer']} layers, width {c['model.n_embd']}, {c['model.n_head']} heads, context "
        f"{c['model.block_size']}, dropout {c['model.dropout']}"
    )
    warmup = c["train.warmup_steps"]
    return [
        f"- Baseline: **{a.baseline.label}**; seeds {seeds}; runs grouped by {', '.join(a.baseline.values)}.",
        f"- Model (baseline): {model}, {c['_run.params']:,} parameters "
        f"({c['_run.params_non_embedding']:,} non-embedding).",
        f"- Data: {c['data.dataset']}; {c['train.max_steps']} steps x {c['train.batch_size']} sequences x "
        f"{c['model.block_size']} tokens = {tokens:,} training tokens per run (equal for every variant).",
        f"- Optimiser: AdamW, peak lr {c['train.lr']}, linear warmup {warmup} steps (baseline; see each "
        f"variant's label), cosine to {c['train.min_lr_ratio']} x lr, weight decay "
        f"{c['train.weight_decay']}, gradient clipping {c['train.grad_clip']}.",
        f"- Final evaluation: {s.get('final_val/tokens', 'n/a'):,} val and "
        f"{s.get('final_test/tokens', 'n/a'):,} test "
        f"tokens (train.eval_max_tokens={c.get('train.eval_max_tokens', 0)}; 0 means whole splits), "
        f"non-overlapping windows of context {s.get('final_val/context')} "
        f"(stride {s.get('final_val/stride')}).",
        f"- Hardware: {c['_run.device']}, {c['train.threads']} thread(s) per run, "
        f"precision {c['_run.precision']}.",
    ]


def write_report(a: Analysis, out_dir: str | Path, title: str) -> Path:
    """Write ``report.md`` and its PNG plots into ``out_dir``; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, Path | None]] = [
        (
            "Training loss",
            plots.plot_curves(
                a.variants,
                "train/loss",
                "training loss (nats/token)",
                "Training loss",
                out / "train_loss.png",
            ),
        ),
        (
            "Validation perplexity",
            plots.plot_curves(
                a.variants,
                "val/ppl",
                "validation perplexity",
                "Validation perplexity",
                out / "val_ppl.png",
                log_y=True,
            ),
        ),
        ("Final perplexity", plots.plot_final(a.variants, FINAL_METRICS, out / "final_ppl.png")),
        (
            "Global gradient norm",
            plots.plot_curves(
                a.variants,
                "train/grad_norm",
                "gradient norm (L2, before clipping)",
                "Gradient norm",
                out / "grad_norm.png",
                log_y=True,
            ),
        ),
        ("Per-layer gradient norm", plots.plot_layer_grad_norms(a.variants, out / "layer_grad_norms.png")),
        ("Throughput", plots.plot_throughput(a.variants, out / "throughput.png")),
    ]
    lines = [
        f"# {title}",
        "",
        "Generated by `python -m analysis.report`; numbers are over seeds (n per row).",
        "",
    ]
    lines += ["## Setup", "", *setup_lines(a), ""]
    lines += ["## Final perplexity", "", *final_table(a), ""]
    lines += [
        "## Against the baseline",
        "",
        "Difference of means (variant - baseline) and the two-sided p-value of Welch's t-test.",
        "",
        *comparison_table(a),
        "",
    ]
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
    lines += ["## Throughput", "", *throughput_table(a), ""]
    lines += ["## Plots", ""]
    for caption, path in figures:
        if path is not None:
            lines += [f"### {caption}", "", f"![{caption}]({path.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def parse_baseline(items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--baseline takes key=value pairs, got {item!r}")
        key, value = item.split("=", 1)
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="*", help="folders holding run directories")
    parser.add_argument("--wandb", default="", help="read runs from this W&B project (entity/project)")
    parser.add_argument("--group-by", nargs="+", required=True, help="dotted config keys")
    parser.add_argument("--baseline", nargs="*", default=[], help="key=value pairs naming the baseline")
    parser.add_argument("--out", required=True, help="folder for report.md and the plots")
    parser.add_argument("--title", default="Ablation report")
    args = parser.parse_args(argv)
    if not args.run_dirs and not args.wandb:
        parser.error("give run folders or --wandb ENTITY/PROJECT")
    try:
        runs: list[Any] = load_runs(args.run_dirs) if args.run_dirs else []
        if args.wandb:
            runs += load_wandb_runs(args.wandb)
        analysis = analyse(runs, args.group_by, parse_baseline(args.baseline))
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {write_report(analysis, args.out, args.title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
