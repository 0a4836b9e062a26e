"""The statistics an ablation claim needs: means with t-based confidence intervals, Welch's t-test, and
curves averaged over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.runs import Run


@dataclass
class Estimate:
    mean: float
    half_width: float
    """Half the width of the confidence interval (nan with fewer than two values)."""
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and the half-width of its two-sided t-distribution confidence interval."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return Estimate(math.nan, math.nan, 0)
    if len(x) < 2:
        return Estimate(float(x[0]), math.nan, 1)
    sem = x.std(ddof=1) / math.sqrt(len(x))
    return Estimate(float(x.mean()), float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * sem), len(x))


@dataclass
class Comparison:
    difference: float
    """mean(variant) - mean(baseline)."""
    p_value: float
    """Two-sided Welch's t-test (nan when either side has fewer than two values)."""


def welch(variant: Sequence[float], baseline: Sequence[float]) -> Comparison:
    a, b = np.asarray(variant, dtype=float), np.asarray(baseline, dtype=float)
    difference = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Comparison(difference, math.nan)
    return Comparison(difference, float(stats.ttest_ind(a, b, equal_var=False).pvalue))


@dataclass
class Curve:
    tokens: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    """The band: the 95% t-interval of the mean over runs (equal to the mean where only one run logged)."""


def mean_curve(runs: Sequence[Run], key: str, confidence: float = 0.95) -> Curve | None:
    """``key`` against tokens seen, averaged over ``runs`` at the token counts every run logged."""
    series = [dict(zip(*run.series(key), strict=True)) for run in runs]
    series = [s for s in series if s]
    if not series:
        return None
    tokens = sorted(set.intersection(*(set(s) for s in series)))
    means, lows, highs = [], [], []
    for t in tokens:
        e = mean_ci([s[t] for s in series], confidence)
        half = 0.0 if math.isnan(e.half_width) else e.half_width
        means.append(e.mean)
        lows.append(e.mean - half)
        highs.append(e.mean + half)
    return Curve(np.array(tokens), np.array(means), np.array(lows), np.array(highs))


def layer_grad_norms(runs: Sequence[Run]) -> dict[int, Estimate]:
    """Each block's gradient norm (``grad_norm/layer_i``), averaged over a run's logged steps, then over
    runs; empty when the runs did not log them."""
    per_layer: dict[int, list[float]] = {}
    for run in runs:
        keys = {k for h in run.history for k in h if k.startswith("grad_norm/layer_")}
        for key in keys:
            values = [h[key] for h in run.history if key in h and math.isfinite(h[key])]
            if values:
                per_layer.setdefault(int(key.rsplit("_", 1)[1]), []).append(float(np.mean(values)))
    return {layer: mean_ci(values) for layer, values in sorted(per_layer.items())}
