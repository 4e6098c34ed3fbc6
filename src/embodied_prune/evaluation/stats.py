"""Confidence intervals (pure functions, numpy only)."""

from __future__ import annotations

import math
import warnings

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


def seeds_and_items_ci(
    a, b=None, level: float = 0.95, resamples: int = 5000, seed: int = 0
) -> tuple[float, float, float]:
    """A mean over training seeds and items whose interval counts both sources of spread: ``a`` is a
    (seeds × items) array of per-item scores, one row per independently trained model; NaN marks an item
    a model could not be scored on. Without ``b``: the mean of ``a`` (each item averaged over seeds first).
    With ``b`` (its own seeds, the same items): the difference ``mean(b) − mean(a)``, paired by item.

    Two-level percentile bootstrap: each resample draws seeds with replacement (for ``a`` and ``b``
    independently, as they are different models) and items with replacement (shared, as both answered the
    same items). With few seeds it is somewhat narrow (the seed spread is resampled from the seeds at hand).
    """
    groups = [np.atleast_2d(np.asarray(x, dtype=float)) for x in ((a,) if b is None else (a, b))]
    n_items = groups[0].shape[1]
    if any(g.shape[1] != n_items for g in groups):
        raise ValueError(f"both arrays need the same items (columns): {[g.shape for g in groups]}")

    def score(per_item: list[np.ndarray]) -> np.ndarray:
        # paired: an item counts where every group could be scored on it
        return _nanmean(per_item[-1] - per_item[0] if b is not None else per_item[0], axis=-1)

    def seed_mean(g: np.ndarray) -> np.ndarray:
        return _nanmean(g, axis=-2)

    point = score([seed_mean(g) for g in groups])
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, size=(resamples, n_items))
    per_item = []
    for g in groups:
        seeds = rng.integers(0, g.shape[0], size=(resamples, g.shape[0]))
        per_item.append(np.take_along_axis(seed_mean(g[seeds]), items, axis=1))  # (resamples, items)
    samples = score(per_item)
    lo, hi = np.nanquantile(samples, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(point), float(lo), float(hi))


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean`` without its warning for an all-NaN slice (NaN there, as nanmean returns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


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
