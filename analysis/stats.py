"""The statistics an ablation claim needs, on validation loss (log-perplexity, where seed noise is closer to
normal and differences are perplexity ratios): t-based confidence intervals, paired and Welch t-tests against
the baseline, Holm's correction over one report's comparisons, the smallest detectable difference, and
curves averaged over seeds (in log space on log axes)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from analysis.runs import Run

METRIC = "final_val/loss"
"""Every test is on validation loss (log-perplexity); perplexities and ratios are its exponentials."""


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


def t_quantile(n: int, confidence: float = 0.95) -> float:
    """The two-sided t critical value for the mean of ``n`` values (nan below two)."""
    return float(stats.t.ppf((1 + confidence) / 2, n - 1)) if n >= 2 else math.nan


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and the half-width of its two-sided t-distribution confidence interval."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return Estimate(math.nan, math.nan, 0)
    if len(x) < 2:
        return Estimate(float(x[0]), math.nan, 1)
    sem = x.std(ddof=1) / math.sqrt(len(x))
    return Estimate(float(x.mean()), t_quantile(len(x), confidence) * float(sem), len(x))


@dataclass
class Comparison:
    """A variant against the baseline on validation loss; exponentiated, ``ci`` is the perplexity ratio."""

    ci: Estimate
    """The mean per-seed difference (variant - baseline, same seed) and its 95% interval; without two shared
    seeds, the difference of means and Welch's interval."""
    paired_p: float
    """Two-sided paired t-test over the seeds both sides ran (nan with fewer than two shared seeds)."""
    welch_p: float
    """Two-sided Welch's t-test (nan when either side has fewer than two values)."""


def compare(variant: dict[Any, float], baseline: dict[Any, float]) -> Comparison:
    """Variant against baseline, each a mapping seed -> value. Runs sharing a seed share the data order, so
    the paired test removes that source of variance; Welch's test ignores the pairing."""
    a, b = list(variant.values()), list(baseline.values())
    shared = sorted(set(variant) & set(baseline), key=str)
    if len(shared) >= 2:
        paired = stats.ttest_rel([variant[s] for s in shared], [baseline[s] for s in shared])
        ci = mean_ci([variant[s] - baseline[s] for s in shared])
        paired_p = float(paired.pvalue)
    else:
        ci, paired_p = Estimate(float(np.mean(a) - np.mean(b)), math.nan, 0), math.nan
    if len(a) < 2 or len(b) < 2:
        return Comparison(ci, paired_p, math.nan)
    welch = stats.ttest_ind(a, b, equal_var=False)
    if len(shared) < 2:
        low, high = welch.confidence_interval(0.95)
        ci = Estimate(float(np.mean(a) - np.mean(b)), float(high - low) / 2, 0)
    return Comparison(ci, paired_p, float(welch.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over the comparisons); nan stays nan."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (len(indexed) - rank) * p))
        adjusted[i] = running
    return adjusted


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float | None = None) -> float:
    """The smallest true mean difference a paired t-test over ``n`` seeds detects at level ``alpha``, given
    the SD of the per-seed differences: the one that just reaches p < alpha (``power=None``), or the one
    it detects with probability ``power`` (normal-theory approximation with t quantiles)."""
    if n < 2 or math.isnan(sd):
        return math.nan
    z = stats.t.ppf(1 - alpha / 2, n - 1) + (0.0 if power is None else stats.t.ppf(power, n - 1))
    return float(z * sd / math.sqrt(n))


MAX_EXACT = 16
"""The most paired differences ``sign_flip_p`` enumerates (2^16 patterns); with more, the t-test's normal
approximation is good enough and the enumeration would grow past memory."""


def sign_flip_p(diffs: Sequence[float]) -> float:
    """The exact two-sided p-value of the paired sign-flip (permutation) test of a zero mean difference.

    Under the null hypothesis each paired difference is as likely to carry either sign, so all 2^n sign
    patterns are equally likely; the p-value is the share of them whose |sum| reaches the observed |sum|.
    With n pairs it cannot fall below 2 / 2^n (0.25 at n = 3, 0.0625 at n = 5). nan without pairs or with
    more than ``MAX_EXACT``."""
    d = np.asarray(diffs, dtype=float)
    if len(d) == 0 or len(d) > MAX_EXACT:
        return math.nan
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    observed = abs(d.sum())
    # a relative tolerance, so the pattern equal to the observed one counts despite rounding
    return float(np.mean(np.abs(signs @ d) >= observed - 1e-9 * max(1.0, observed)))


@dataclass
class SpreadEstimate:
    """The SD of paired differences with its chi-square confidence interval (nan below two pairs)."""

    sd: float
    low: float
    high: float
    n: int


def sd_ci(diffs: Sequence[float], confidence: float = 0.95) -> SpreadEstimate:
    """Sample SD of ``diffs`` and its interval from (n-1) s^2 / sigma^2 ~ chi-square(n-1) (normal data)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n < 2:
        return SpreadEstimate(math.nan, math.nan, math.nan, n)
    sd = float(d.std(ddof=1))
    upper_q = stats.chi2.ppf((1 + confidence) / 2, n - 1)
    lower_q = stats.chi2.ppf((1 - confidence) / 2, n - 1)
    return SpreadEstimate(sd, sd * math.sqrt((n - 1) / upper_q), sd * math.sqrt((n - 1) / lower_q), n)


@dataclass
class Tost:
    """Two one-sided tests of equivalence of a mean paired difference within +-``bound``."""

    p: float
    """The larger of the two one-sided p-values: below alpha, the difference lies within the bound."""
    low: float
    high: float
    """The (1 - 2 alpha) confidence interval of the mean difference (90% for alpha = 0.05)."""
    bound: float


def tost(diffs: Sequence[float], bound: float, alpha: float = 0.05) -> Tost:
    """Paired TOST: one t-test of H0 mean <= -bound and one of H0 mean >= +bound, each at ``alpha``;
    equivalence is shown when both reject, i.e. when the (1 - 2 alpha) interval lies inside +-bound."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n < 2:
        return Tost(math.nan, math.nan, math.nan, bound)
    mean, se = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:  # identical differences: the interval is a point
        return Tost(0.0 if abs(mean) < bound else 1.0, mean, mean, bound)
    p_above_lower = float(stats.t.sf((mean + bound) / se, n - 1))
    p_below_upper = float(stats.t.cdf((mean - bound) / se, n - 1))
    q = float(stats.t.ppf(1 - alpha, n - 1))
    return Tost(max(p_above_lower, p_below_upper), mean - q * se, mean + q * se, bound)


def equivalence_verdict(result: Tost, adjusted_p: float, alpha: float = 0.05) -> str:
    """``equivalent`` when the (Holm-adjusted) TOST p-value is below ``alpha``; ``not equivalent`` when the
    whole interval lies outside the bound; otherwise ``inconclusive`` (the data allow both)."""
    if math.isnan(result.p):
        return "inconclusive"
    if adjusted_p < alpha:
        return "equivalent"
    if result.low > result.bound or result.high < -result.bound:
        return "not equivalent"
    return "inconclusive"


@dataclass
class PairedSummary:
    """One comparison's paired differences (variant - baseline, same seed): everything its table row shows."""

    diff: Estimate
    """Mean difference and its 95% t-interval."""
    t_p: float
    """Two-sided paired t-test (nan below two pairs or when every difference is equal)."""
    sign_flip_p: float
    spread: SpreadEstimate
    mde: float
    """The smallest mean difference this comparison detects with 80% power at alpha 0.05, from its SD."""
    mde_low: float
    mde_high: float
    """The same at the ends of the SD's 95% interval."""


def paired_summary(diffs: Sequence[float], power: float = 0.8, alpha: float = 0.05) -> PairedSummary:
    """Paired t-test, exact sign-flip test, the SD of the differences and the minimum detectable effect,
    all from this comparison's own differences (never pooled with other comparisons)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    t_p = math.nan
    if n >= 2 and d.std(ddof=1) > 0:
        t_p = float(stats.ttest_1samp(d, 0.0).pvalue)
    spread = sd_ci(d)
    return PairedSummary(
        mean_ci(d),
        t_p,
        sign_flip_p(d),
        spread,
        detectable_difference(spread.sd, n, alpha, power),
        detectable_difference(spread.low, n, alpha, power),
        detectable_difference(spread.high, n, alpha, power),
    )


@dataclass
class Curve:
    tokens: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    """The band: the 95% t-interval of the mean over runs (equal to the mean where only one run logged);
    with ``log=True`` the geometric mean and an interval computed on the logarithms."""


def mean_curve(runs: Sequence[Run], key: str, log: bool = False, confidence: float = 0.95) -> Curve | None:
    """``key`` against tokens seen, averaged over ``runs`` at the token counts every run logged; in log
    space when ``log`` (for quantities plotted on a log axis, so the band is symmetric there)."""
    series = [dict(zip(*run.series(key), strict=True)) for run in runs]
    series = [s for s in series if s]
    if not series:
        return None
    tokens = sorted(set.intersection(*(set(s) for s in series)))
    transform, inverse = (np.log, np.exp) if log else (np.asarray, np.asarray)
    means, lows, highs = [], [], []
    for t in tokens:
        values = [s[t] for s in series]
        if log and min(values) <= 0:
            return None
        e = mean_ci(transform(np.asarray(values, dtype=float)), confidence)
        half = 0.0 if math.isnan(e.half_width) else e.half_width
        means.append(e.mean)
        lows.append(e.mean - half)
        highs.append(e.mean + half)
    return Curve(
        np.array(tokens), inverse(np.array(means)), inverse(np.array(lows)), inverse(np.array(highs))
    )


def layer_grad_norms(runs: Sequence[Run]) -> dict[int, Estimate]:
    """Each block's gradient norm (``grad_norm/layer_i``): the geometric mean over a run's logged steps,
    then the mean and 95% interval of its logarithm over runs (exponentiate to plot on a log axis); empty
    when the runs did not log them."""
    per_layer: dict[int, list[float]] = {}
    for run in runs:
        keys = {k for h in run.history for k in h if k.startswith("grad_norm/layer_")}
        for key in keys:
            values = [h[key] for h in run.history if key in h and isinstance(h[key], int | float)]
            values = [v for v in values if math.isfinite(v) and v > 0]
            if values:
                per_layer.setdefault(int(key.rsplit("_", 1)[1]), []).append(float(np.mean(np.log(values))))
    return {layer: mean_ci(values) for layer, values in sorted(per_layer.items())}
