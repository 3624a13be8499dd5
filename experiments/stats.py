"""The statistics behind the claims' verdicts: the mean and standard error over seeds, the binomial
standard error of an accuracy, Spearman's rank correlation and its bootstrap confidence interval."""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy.stats import rankdata, spearmanr

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed, so that RESULTS.md is the same each time it is built


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """The mean and its standard error, sample standard deviation (ddof = 1) / √n; the standard
    error is None for a single value."""
    if not values:
        raise ValueError("mean_se of no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def binomial_se(p: float, n: int) -> float:
    """The standard error √(p(1 − p)/n) of an accuracy p measured on n independent examples."""
    if n <= 0:
        raise ValueError(f"binomial_se needs n > 0 examples, not {n}")
    return math.sqrt(p * (1 - p) / n)


def spearman(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Spearman's rank correlation of the pairs (xs, ys) and its two-sided p-value."""
    res = spearmanr(xs, ys)
    return float(res.statistic), float(res.pvalue)


def _rank_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row of x (B, n) with the same row of y (B, n): Pearson's correlation of
    the ranks, ties given their mean rank (as ``scipy.stats.spearmanr``). Rows must not be constant."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)  # (B, n)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    return (rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))  # (B,)


def spearman_ci(xs: list[float], ys: list[float], *, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """A percentile bootstrap confidence interval for Spearman's ρ of the pairs (xs, ys): the pairs
    are resampled with replacement ``resamples`` times from a generator seeded with ``seed``; a
    resample where either side is constant has no ρ and is skipped. None when every one is."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman_ci of {len(xs)} x values and {len(ys)} y values")
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))  # (B, n)
    bx, by = x[idx], y[idx]
    keep = (np.ptp(bx, axis=1) > 0) & (np.ptp(by, axis=1) > 0)
    if not keep.any():
        return None
    rho = _rank_corr(bx[keep], by[keep])
    lo, hi = np.quantile(rho, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
