"""Confidence intervals (pure functions, numpy only)."""

from __future__ import annotations

import math

import numpy as np


def bootstrap_mean_ci(values, level: float = 0.95, resamples: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so reports are reproducible)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    if len(x) == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def paired_diff_ci(a, b, level: float = 0.95, resamples: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b − a`` over paired items and its percentile bootstrap interval (items resampled)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    d = b - a
    lo, hi = bootstrap_mean_ci(d, level, resamples, seed)
    return (float(d.mean()) if len(d) else float("nan"), lo, hi)


def recovered_share_ci(
    dense, pruned, model, level: float = 0.95, resamples: int = 5000, seed: int = 0
) -> tuple[float, float, float]:
    """Share of the loss ``mean(dense) − mean(pruned)`` that ``model`` wins back, ``(model − pruned) / (dense −
    pruned)`` in means over paired items, with a percentile bootstrap interval (items resampled together for all
    three; resamples where pruning lost nothing are dropped). All NaN when pruning lost nothing."""
    d, p, m = (np.asarray(x, dtype=float) for x in (dense, pruned, model))
    if not d.shape == p.shape == m.shape:
        raise ValueError(f"paired samples differ in shape: {d.shape}, {p.shape}, {m.shape}")

    def share(d, p, m):
        lost = d.mean(-1) - p.mean(-1)
        return np.where(lost > 0, (m.mean(-1) - p.mean(-1)) / np.where(lost > 0, lost, 1), np.nan)

    point = float(share(d, p, m)) if len(d) else float("nan")
    if np.isnan(point):
        return (float("nan"), float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    samples = share(d[idx], p[idx], m[idx])
    lo, hi = np.quantile(samples[~np.isnan(samples)], [(1 - level) / 2, 1 - (1 - level) / 2])
    return (point, float(lo), float(hi))


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    z = {0.9: 1.6448536, 0.95: 1.959964, 0.99: 2.5758293}.get(level) or _z(level)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _z(level: float) -> float:
    # inverse normal CDF by bisection on erf (levels other than the tabulated ones are rare)
    target = 1 - (1 - level) / 2
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
