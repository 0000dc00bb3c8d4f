"""95% bootstrap intervals of the retrieval metrics, resampling the queries.

Why: the test split is small (344 products, 33 rooms), so one room moves a room figure by 3
points and two runs often differ by less than the noise of the split itself. Every metric of
`eval/retrieval.py` is the mean over queries of a per-query score (R@k: 1 when a true item is in
the query's top k, else 0; room photo -> products: the share of the room's listed products found;
room category: 1 when the room is classified right), so its interval comes from resampling the
queries with replacement: the 2.5 and 97.5 percentiles of the resampled means, over 1000
resamples drawn with a fixed seed, so that the same scores always give the same interval.
Scores that are not a mean over queries (corpus BLEU-4) resample the same indices
(`resample_indices`) and take `percentile_interval` of the statistic recomputed on each.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


def bootstrap_interval(per_query: ArrayLike, resamples: int = RESAMPLES, seed: int = SEED,
                       level: float = LEVEL) -> tuple[float, float]:
    """(low, high): the percentile bootstrap interval at `level` of the mean of `per_query` scores."""
    values = np.asarray(per_query, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("a bootstrap interval needs at least one query")
    return percentile_interval(values[resample_indices(values.size, resamples, seed)].mean(axis=1), level)


def resample_indices(size: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, size] query indices drawn with replacement (the same for the same arguments)."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, size, size=(resamples, size))


def percentile_interval(resampled: ArrayLike, level: float = LEVEL) -> tuple[float, float]:
    """(low, high): the central `level` share of a statistic's resampled values."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.asarray(resampled, dtype=np.float64), [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_intervals(per_query: Mapping[str, ArrayLike], resamples: int = RESAMPLES, seed: int = SEED,
                        level: float = LEVEL) -> dict[str, tuple[float, float]]:
    """Each metric's `bootstrap_interval`, by name (each resampled with the same seed)."""
    return {name: bootstrap_interval(scores, resamples, seed, level) for name, scores in per_query.items()}
