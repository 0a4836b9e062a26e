"""Plots of variants: curves against tokens seen, final perplexities, throughput, per-layer gradient norms.

Every function takes the variants (each with its label and colour, so a variant looks the same in every
figure) and writes one PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis.runs import Variant  # noqa: E402
from analysis.stats import layer_grad_norms, mean_ci, mean_curve  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(
    variants: Sequence[Variant], key: str, ylabel: str, title: str, path: str | Path, log_y: bool = False
) -> Path | None:
    """Mean of ``key`` over each variant's runs against tokens seen, with its 95% CI as a band; None when no
    variant logged ``key`` at two or more points."""
    fig, ax = plt.subplots(figsize=(8, 5))
    plotted = False
    for v in variants:
        curve = mean_curve(v.runs, key)
        if curve is None or len(curve.tokens) < 2:
            continue
        plotted = True
        ax.plot(curve.tokens, curve.mean, color=v.colour, label=f"{v.label} (n={len(v.runs)})")
        ax.fill_between(curve.tokens, curve.low, curve.high, color=v.colour, alpha=0.2, linewidth=0)
    if not plotted:
        plt.close(fig)
        return None
    ax.set(xlabel="tokens seen", ylabel=ylabel, title=f"{title}\n(mean over seeds, band: 95% CI)")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_final(variants: Sequence[Variant], keys: Sequence[str], path: str | Path) -> Path:
    """Final metrics (e.g. ``final_val/ppl``) per variant: mean and 95% CI, one panel per key."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 0.5 * len(variants) + 2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for row, v in enumerate(variants):
            e = mean_ci([r.summary[key] for r in v.runs if key in r.summary])
            err = 0.0 if math.isnan(e.half_width) else e.half_width
            ax.errorbar(e.mean, row, xerr=err, fmt="o", color=v.colour, capsize=4)
        ax.set_yticks(range(len(variants)), [v.label for v in variants], fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel=f"{key} (lower is better)", title=f"final {key}: mean, 95% CI")
        ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_throughput(variants: Sequence[Variant], path: str | Path) -> Path:
    """Training throughput per variant (``tokens_per_sec`` of each run's summary), mean and 95% CI."""
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(variants) + 2))
    for row, v in enumerate(variants):
        e = mean_ci([r.summary["tokens_per_sec"] for r in v.runs if "tokens_per_sec" in r.summary])
        err = 0.0 if math.isnan(e.half_width) else e.half_width
        ax.barh(row, e.mean, xerr=err, color=v.colour, capsize=4)
    ax.set_yticks(range(len(variants)), [v.label for v in variants], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="training throughput (tokens/s)", title="Throughput per variant (mean, 95% CI)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_layer_grad_norms(variants: Sequence[Variant], path: str | Path) -> Path | None:
    """Each block's gradient norm (before clipping, averaged over logged steps and runs) against depth;
    None when no variant logged them."""
    fig, ax = plt.subplots(figsize=(8, 5))
    plotted = False
    for v in variants:
        norms = layer_grad_norms(v.runs)
        if not norms:
            continue
        layers = list(norms)
        means = [norms[i].mean for i in layers]
        errs = [0.0 if math.isnan(norms[i].half_width) else norms[i].half_width for i in layers]
        ax.errorbar(layers, means, yerr=errs, color=v.colour, marker="o", capsize=3, label=v.label)
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set(
        xlabel="block (0 = nearest the input)",
        ylabel="gradient norm (L2, before clipping)",
        title="Per-layer gradient norm, mean over training (95% CI over seeds)",
    )
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
