"""Plots of an ablation suite: final perplexity per seed, curves against tokens seen, per-layer gradient norms
and throughput.

Every variant keeps its label and colour across figures, the baseline in black. Curves are small multiples:
one panel per variant against the baseline, panels sharing both axes. Quantities on log axes are averaged
and given bands in log space, so the bands are symmetric where they are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    EngFormatter,
    FixedLocator,
    FormatStrFormatter,
    Formatter,
    MaxNLocator,
    NullLocator,
)

from analysis.stats import METRIC, Curve, layer_grad_norms, mean_ci, mean_curve  # noqa: E402
from analysis.variants import Variant  # noqa: E402

if TYPE_CHECKING:
    from analysis.report import Analysis

DPI = 120
LABEL_INCHES = 2.6
"""Width kept for variant labels on the left of a figure."""


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def _seed_offsets(n: int) -> np.ndarray:
    """Small vertical offsets so the seeds of one row do not sit on each other."""
    return np.linspace(-0.18, 0.18, n) if n > 1 else np.zeros(1)


def log_tick_values(low: float, high: float, most: int = 5) -> list[float]:
    """Round ticks for a log axis from ``low`` to ``high``: the densest of the 1-1.5-2-3-4-5-7, 1-2-3-5,
    1-2-5, 1-3 and 1 series per decade that gives at most ``most`` ticks, so a 180-1,400 axis reads 200, 300,
    500, 1000 rather than a lone 1000 or crowded "6x10^2" labels."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks: list[float] = []
    for mantissas in ((1, 1.5, 2, 3, 4, 5, 7), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        ticks = [t for e in decades for m in mantissas if low <= (t := float(f"{m}e{e}")) <= high]
        if len(ticks) <= most:
            break
    return ticks


def _nice_log_ticks(axis: matplotlib.axis.Axis, formatter: Formatter, always: float | None = None) -> None:
    """Round-number ticks on a log axis spanning up to three decades (``log_tick_values``); a range too
    narrow for two of them (a ratio axis around 1) gets evenly spaced ones; wider ones keep the decades."""
    low, high = axis.get_view_interval()
    if low <= 0 or high / low > 1000:
        return
    ticks = log_tick_values(low, high)
    if len(ticks) < 2:
        ticks = [t for t in MaxNLocator(nbins=4).tick_values(low, high) if low <= t <= high and t > 0]
    if always is not None and low <= always <= high:  # e.g. the ratio 1, where the reference line is
        spacing = (high - low) / 10
        ticks = sorted([t for t in ticks if abs(t - always) > spacing] + [always])
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(formatter)
    axis.set_minor_locator(NullLocator())


def plot_final(a: Analysis, path: str | Path) -> Path:
    """Left: validation perplexity of every seed (dots) and the mean with its 95% interval (computed on the
    loss, so on this log axis). Right: the per-seed ratio to the baseline at the same seed, and the paired
    mean ratio with its interval. The panels share the rows."""
    variants = a.variants
    rows = np.arange(len(variants))
    height = 0.45 * len(variants) + 1.4
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, height), sharey=True, layout="constrained")
    base = {r.seed: r.summary[METRIC] for r in a.baseline.runs}
    for row, v in zip(rows, variants, strict=True):
        losses = [r.summary[METRIC] for r in v.runs]
        left.scatter(np.exp(losses), row + _seed_offsets(len(losses)), s=14, color=v.colour, alpha=0.6, lw=0)
        e = mean_ci(losses)
        err = (
            [[math.exp(e.mean) - math.exp(e.low)], [math.exp(e.high) - math.exp(e.mean)]] if e.n > 1 else None
        )
        left.errorbar(math.exp(e.mean), row, xerr=err, fmt="D", ms=5, color=v.colour, capsize=3)
        if v.is_baseline:
            continue
        ratios = [math.exp(r.summary[METRIC] - base[r.seed]) for r in v.runs if r.seed in base]
        right.scatter(ratios, row + _seed_offsets(len(ratios)), s=14, color=v.colour, alpha=0.6, lw=0)
        ci = a.comparisons[v.label].ci
        err = None
        if not math.isnan(ci.half_width):
            err = [[math.exp(ci.mean) - math.exp(ci.low)], [math.exp(ci.high) - math.exp(ci.mean)]]
        right.errorbar(math.exp(ci.mean), row, xerr=err, fmt="D", ms=5, color=v.colour, capsize=3)
    left.set_yticks(rows, [v.label for v in variants])
    left.invert_yaxis()
    left.set_xscale("log")
    left.set_xlabel("validation perplexity (log scale)")
    left.set_title("per seed (dots), mean and 95% CI", fontsize=10)
    right.axvline(1.0, color="black", lw=0.8)
    right.set_xscale("log")
    right.set_xlabel("perplexity ratio to baseline, same seed")
    right.set_title("paired ratio: per seed, mean and 95% CI", fontsize=10)
    _nice_log_ticks(left.xaxis, EngFormatter(sep=""))
    _nice_log_ticks(right.xaxis, FormatStrFormatter("%g"), always=1.0)
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Final validation perplexity (lower is better)")
    return _save(fig, path)


def plot_curves(
    variants: Sequence[Variant], key: str, ylabel: str, path: str | Path, log_y: bool = False
) -> Path | None:
    """``key`` against tokens seen: one panel per variant, with the baseline repeated in each, mean over
    seeds and its 95% band; None when no variant logged ``key`` at two or more points."""
    curves = {v.label: mean_curve(v.runs, key, log=log_y) for v in variants}
    curves = {k: c for k, c in curves.items() if c is not None and len(c.tokens) >= 2}
    if not curves:
        return None
    baseline = variants[0]
    others = [v for v in variants[1:] if v.label in curves] or [baseline]
    cols = 2 if len(others) > 1 else 1
    rows = math.ceil(len(others) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(5.2 * cols, 2.6 * rows + 0.8),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, v in zip(axes.flat, others, strict=False):
        for shown in [baseline, v] if v is not baseline else [v]:
            c = curves.get(shown.label)
            if c is None:
                continue
            ax.plot(c.tokens, c.mean, color=shown.colour, lw=1.4)
            ax.fill_between(c.tokens, c.low, c.high, color=shown.colour, alpha=0.18, linewidth=0)
        title = v.label if v is baseline else f"{v.label} (n={len(v.runs)}; baseline n={len(baseline.runs)})"
        ax.set_title(title, fontsize=10, color=v.colour)
        ax.grid(alpha=0.3)
        if log_y:
            ax.set_yscale("log")
    for ax in axes.flat[len(others) :]:
        ax.set_visible(False)
    for col in range(cols):
        lowest = [ax for ax in axes[:, col] if ax.get_visible()][-1]
        lowest.set_xlabel("tokens seen")
        lowest.xaxis.set_major_formatter(EngFormatter(sep=""))
        lowest.xaxis.set_major_locator(MaxNLocator(5))
        lowest.tick_params(axis="x", labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    if log_y:
        _nice_log_ticks(axes[0, 0].yaxis, FormatStrFormatter("%g"))
    band = "geometric mean, 95% CI in log space" if log_y else "mean, 95% CI"
    against = "each variant (colour) against the baseline (black); " if len(variants) > 1 else ""
    fig.suptitle(f"{ylabel.capitalize()}\n{against}{band} over seeds")
    return _save(fig, path)


def plot_layer_grad_norms(variants: Sequence[Variant], path: str | Path) -> Path | None:
    """Each block's gradient norm before clipping (geometric mean over logged steps, then over seeds, with
    the 95% interval in log space) against depth; None when no variant logged them."""
    fig, ax = plt.subplots(figsize=(9, 4.6), layout="constrained")
    plotted = False
    for v in variants:
        norms = layer_grad_norms(v.runs)
        if not norms:
            continue
        layers = np.array(list(norms))
        mean = np.exp([norms[i].mean for i in layers])
        half = np.array([0.0 if math.isnan(norms[i].half_width) else norms[i].half_width for i in layers])
        low, high = np.exp(np.log(mean) - half), np.exp(np.log(mean) + half)
        style = {"lw": 2.2, "zorder": 4} if v.is_baseline else {"lw": 1.3}
        ax.plot(layers, mean, color=v.colour, marker="o", ms=4, label=v.label, **style)
        ax.fill_between(layers, low, high, color=v.colour, alpha=0.15, linewidth=0)
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set(xlabel="block (0 = nearest the input)", ylabel="gradient norm before clipping (log scale)")
    ax.set_title("Per-layer gradient norm over training: geometric mean, 95% CI over seeds", fontsize=11)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(fig, path)


def plot_throughput(variants: Sequence[Variant], path: str | Path, measured: str) -> Path:
    """Training tokens/s of every seed (dots) and the geometric mean with its 95% interval, per variant;
    ``measured`` says under what load it was measured (shown under the title)."""
    rows = np.arange(len(variants))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(variants) + 1.6), layout="constrained")
    for row, v in zip(rows, variants, strict=True):
        rates = [r.summary["tokens_per_sec"] for r in v.runs if r.summary.get("tokens_per_sec", 0) > 0]
        if not rates:
            continue
        ax.scatter(rates, row + _seed_offsets(len(rates)), s=14, color=v.colour, alpha=0.6, lw=0)
        e = mean_ci(np.log(rates))
        err = None
        if e.n > 1:
            err = [[math.exp(e.mean) - math.exp(e.low)], [math.exp(e.high) - math.exp(e.mean)]]
        ax.errorbar(math.exp(e.mean), row, xerr=err, fmt="D", ms=5, color=v.colour, capsize=3)
    ax.set_yticks(rows, [v.label for v in variants])
    ax.invert_yaxis()
    ax.set_xlim(0, ax.get_xlim()[1] * 1.08)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel("training throughput (tokens/s per run)")
    ax.set_title(f"Throughput: per seed (dots), geometric mean and 95% CI\n{measured}", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def _unigram_line(ax: plt.Axes, unigram: float | None, transform: str = "loss") -> None:
    """The loss of predicting every token by its training frequency: a model above it has learned nothing
    beyond the unigram distribution."""
    if unigram is None:
        return
    level = math.exp(unigram) if transform == "ppl" else unigram
    ax.axhline(level, color="0.35", lw=1.0, ls=":", label="unigram level", zorder=1)


RUNG_MARKERS = ("v", "s", "^", "D")
"""Markers of the shorter rungs of a successive-halving grid, shortest first; full-budget runs are dots."""


def plot_lr_sensitivity(
    points: dict[str, list[tuple[float, float, float]]],
    chosen: dict[str, float],
    colours: dict[str, str],
    unigram: float | None,
    metric: str,
    path: str | Path,
) -> Path | None:
    """Final ``metric`` against learning rate from the lr grid, one panel per variant (shared axes): each
    point ``(lr, fraction of the budget, loss)``, full-budget points filled dots joined by a line, shorter
    rungs hollow markers; the chosen lr a dashed vertical line. None when no variant has grid points."""
    shown = [label for label in points if points[label]]
    if not shown:
        return None
    fractions = sorted({f for label in shown for _, f, _ in points[label]})
    partial = [f for f in fractions if f < 1.0]
    marker = {f: RUNG_MARKERS[min(i, len(RUNG_MARKERS) - 1)] for i, f in enumerate(partial)}
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(4.2 * cols, 3.0 * rows + 1.2),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, label in zip(axes.flat, shown, strict=False):
        colour = colours[label]
        pts = sorted(points[label])
        for fraction in sorted({f for _, f, _ in pts}):
            xs = [lr for lr, f, _ in pts if f == fraction]
            ys = [loss for _, f, loss in pts if f == fraction]
            if fraction >= 1.0:  # every seed a dot, the line through the mean at each lr
                ax.plot(xs, ys, marker="o", ms=6, ls="none", color=colour, zorder=3)
                at = sorted(set(xs))
                mean = [np.mean([y for x, y in zip(xs, ys, strict=True) if x == lr]) for lr in at]
                ax.plot(at, mean, lw=1.4, color=colour, zorder=3)
            else:
                ax.plot(xs, ys, ls="none", marker=marker[fraction], ms=5, mfc="none", color=colour, alpha=0.6)
        if label in chosen:
            ax.axvline(chosen[label], color=colour, ls="--", lw=1.0)
        ax.set_title(f"{label} (chosen lr {chosen[label]:g})" if label in chosen else label, fontsize=10)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    # The unigram line is drawn where it leaves the losses half the axis or more; far above them (every
    # rate trained) it would flatten the differences the plot is for, so the legend gives its level instead.
    losses = [loss for label in shown for _, _, loss in points[label]]
    low, high = min(losses), max(losses)
    unigram_on_axis = unigram is not None and unigram - low <= 2 * max(high - low, 1e-9)
    if unigram_on_axis:
        for ax in axes.flat[: len(shown)]:
            _unigram_line(ax, unigram)
    elif unigram is not None:
        margin = max(0.08 * (high - low), 0.01)
        axes[0, 0].set_ylim(low - margin, high + margin)
    lrs = sorted({lr for label in shown for lr, _, _ in points[label]})
    axes[0, 0].xaxis.set_major_locator(FixedLocator(lrs))
    axes[0, 0].xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes[0, 0].xaxis.set_minor_locator(NullLocator())
    for ax in axes.flat[len(shown) :]:
        ax.set_visible(False)
    for col in range(cols):
        lowest = [ax for ax in axes[:, col] if ax.get_visible()][-1]
        lowest.set_xlabel("peak learning rate (log scale)")
        lowest.tick_params(axis="x", labelbottom=True, labelrotation=30)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric} (nats/token)")
    grey = "0.3"
    handles = [
        plt.Line2D(
            [], [], color=grey, marker=marker[f], ls="none", mfc="none", label=f"rung: {f:.2g} of budget"
        )
        for f in partial
    ]
    handles += [
        plt.Line2D([], [], color=grey, marker="o", lw=1.4, label="whole budget (line: mean over seeds)"),
        plt.Line2D([], [], color=grey, ls="--", lw=1.0, label="chosen lr"),
    ]
    if unigram_on_axis:
        handles.append(plt.Line2D([], [], color="0.35", ls=":", lw=1.0, label="unigram level"))
    elif unigram is not None:
        above = f"unigram level {unigram:.2f}: above every run, off the axis"
        handles.append(plt.Line2D([], [], color="none", label=above))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"Learning-rate sensitivity: {metric} at the end of each grid run (lower is better)")
    return _save(fig, path)


def _zoom_window(curves: dict[str, Curve]) -> tuple[float, float, float] | None:
    """Where the second half of training lies (first token, lowest and highest loss) when it fills less than a
    third of the whole run's loss range, so that the differences between variants are lost on the full axis;
    else None."""
    multi = [c for c in curves.values() if len(c.tokens) > 1]
    if not multi:
        return None
    start = max(float(c.tokens[-1]) for c in multi) / 2
    late = [(c.low[c.tokens >= start], c.high[c.tokens >= start]) for c in multi]
    if any(len(low) < 2 for low, _ in late):
        return None
    low = min(float(np.min(lo)) for lo, _ in late)
    high = max(float(np.max(hi)) for _, hi in late)
    full = max(float(np.max(c.high)) for c in multi) - min(float(np.min(c.low)) for c in multi)
    if 3 * (high - low) >= full:
        return None
    margin = max(0.08 * (high - low), 0.005)
    return start, low - margin, high + margin


def plot_loss_curves(
    curves: dict[str, Curve],
    colours: dict[str, str],
    unigram: float | None,
    ylabel: str,
    title: str,
    path: str | Path,
    each_seed: dict[str, list[Curve]] | None = None,
) -> Path | None:
    """One curve per variant (mean over seeds with its 95% band) against tokens seen, from the first
    logged point (step 0 where the run logged it), with the unigram level. A variant with one estimate (a
    run shorter than the estimate interval's second multiple) is a marker with its interval as an error bar.
    A variant in ``each_seed`` is drawn as one thin line per seed instead (seeds whose outcomes split, which a
    mean would misdescribe). When the second half of training is too flat to tell the variants apart on the
    whole run's axis, a second panel shows it zoomed. None when no variant has an estimate."""
    each_seed = {k: [c for c in v if len(c.tokens) > 1] for k, v in (each_seed or {}).items()}
    each_seed = {k: v for k, v in each_seed.items() if v}
    curves = {k: c for k, c in curves.items() if c is not None and len(c.tokens) >= 1 and k not in each_seed}
    if not curves and not each_seed:
        return None
    seed_lines = {f"{k} {i}": c for k, v in each_seed.items() for i, c in enumerate(v)}
    zoom = _zoom_window({**curves, **seed_lines})
    if zoom is None:
        fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
        axes = [ax]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=(3, 2), layout="constrained")
        ax = axes[0]
    # Past the palette's length colours repeat: each repeat of a colour gets the next line style.
    order = list(colours)
    repeat = {k: [colours[o] for o in order[: order.index(k)]].count(colours[k]) for k in order}
    for panel in axes:
        for label, c in curves.items():
            style = ("-", "--", ":", "-.")[repeat[label] % 4]
            if len(c.tokens) == 1:
                error = [c.mean - c.low, c.high - c.mean]
                panel.errorbar(
                    c.tokens,
                    c.mean,
                    yerr=error,
                    color=colours[label],
                    marker="o",
                    ms=5,
                    capsize=3,
                    label=label,
                )
                continue
            panel.plot(c.tokens, c.mean, color=colours[label], lw=1.5, ls=style, label=label)
            panel.fill_between(c.tokens, c.low, c.high, color=colours[label], alpha=0.18, linewidth=0)
        for label, seeds in each_seed.items():
            style = ("-", "--", ":", "-.")[repeat[label] % 4]
            for i, c in enumerate(seeds):
                shown = f"{label}: each seed (seeds split)" if i == 0 else None
                panel.plot(c.tokens, c.mean, color=colours[label], lw=0.9, ls=style, alpha=0.85, label=shown)
        _unigram_line(panel, unigram)
        panel.set_xlabel("tokens seen")
        panel.xaxis.set_major_formatter(EngFormatter(sep=""))
        panel.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    if zoom is not None:
        start, low, high = zoom
        end = max(float(c.tokens[-1]) for c in [*curves.values(), *seed_lines.values()])
        axes[1].set_xlim(start, end + 0.02 * (end - start))
        axes[1].set_ylim(low, high)
        axes[1].set_title("the second half of training, zoomed", fontsize=11)
    handles, labels = ax.get_legend_handles_labels()
    # the variants' order, whatever their marker or drawing
    rank = {label: i for i, label in enumerate(colours)}
    rank.update({f"{label}: each seed (seeds split)": rank.get(label, len(rank)) for label in each_seed})
    ordered = sorted(zip(labels, handles, strict=True), key=lambda lh: rank.get(lh[0], len(rank)))
    axes[-1].legend(
        [h for _, h in ordered],
        [label for label, _ in ordered],
        fontsize=8,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
    )
    return _save(fig, path)


def plot_layer_grad_curves(
    per_variant: dict[str, dict[int, Curve]],
    title: str,
    path: str | Path,
    ylabel: str = "gradient norm before clipping (log scale)",
) -> Path | None:
    """A per-block series (by default each block's gradient norm) against tokens seen, one panel per variant
    (shared log y axis), one line per block (geometric mean over seeds); None when no variant logged it."""
    shown = {k: v for k, v in per_variant.items() if v}
    if not shown:
        return None
    layers = sorted({layer for curves in shown.values() for layer in curves})
    cmap = plt.get_cmap("viridis")
    colour = {layer: cmap(i / max(1, len(layers) - 1)) for i, layer in enumerate(layers)}
    fig, axes = plt.subplots(
        1, len(shown), figsize=(4.4 * len(shown) + 1.2, 4.0), sharey=True, squeeze=False, layout="constrained"
    )
    for ax, (label, curves) in zip(axes[0], shown.items(), strict=True):
        for layer, c in sorted(curves.items()):
            ax.plot(c.tokens, c.mean, color=colour[layer], lw=1.3, label=f"block {layer}")
        ax.set_yscale("log")
        ax.set_xlim(left=0)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("tokens seen")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(ylabel)
    axes[0, -1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle(title)
    return _save(fig, path)
