"""Everything `vislang eval` reports for a trained model, and its text table."""
from __future__ import annotations

import numpy as np

from ..data.catalog import Catalog
from ..ranking import RerankSettings
from .bootstrap import bootstrap_intervals
from .captioning import evaluate_captions
from .reranking import evaluate_reranking
from .retrieval import RERANKED, EmbeddingCache, chance_levels, metric_means, per_query_scores, skipping_unreadable

Interval = tuple[float, float]


def evaluate_model_with_intervals(model, catalog: Catalog, split: str = "test", cache: EmbeddingCache | None = None,
                                  reranker: RerankSettings | None = None) -> tuple[dict[str, float], dict[str, Interval]]:
    """Retrieval metrics, plus caption scores and re-ranking when the model has those heads, and
    the 95% bootstrap interval of each (eval/bootstrap.py). With `reranker`, also the text <-> image metrics re-ranked by
    it, prefixed `reranked_`. One embedding cache serves all: each image and caption is encoded once."""
    cache = {} if cache is None else cache

    def scores_and_metrics(readable: Catalog) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Interval]]:
        scores = per_query_scores(model, readable, split, cache, reranker)
        metrics, intervals = metric_means(scores), bootstrap_intervals(scores)
        heads = []
        if model.has("decoder") and readable.select(split, "product"):
            heads.append(evaluate_captions(model, readable, split, cache=cache)[:2])
        if model.has("matching") and readable.select(split, "product"):
            heads.append(evaluate_reranking(model, readable, split, cache=cache))
        for head_metrics, head_intervals in heads:
            metrics.update(head_metrics)
            intervals.update(head_intervals)
        return scores, metrics, intervals

    (_, metrics, intervals), _ = skipping_unreadable(scores_and_metrics, catalog)  # unreadable images: items left out
    return metrics, intervals


def format_report(metrics: dict[str, float], catalog: Catalog, split: str, intervals: dict[str, Interval] | None = None) -> str:
    """One line a metric: its value, its 95% interval when `intervals` has one ("0.488 [0.436, 0.541]"),
    and its chance level when it has one. The re-ranked metrics, when there are any, follow in a
    block of their own, under their names without the prefix."""
    chance = chance_levels(catalog, split)
    intervals = intervals or {}
    blank = " " * len(" [0.000, 0.000]") if intervals else ""

    def line(key: str, name: str) -> str:
        low_high = f" [{intervals[key][0]:.3f}, {intervals[key][1]:.3f}]" if key in intervals else blank
        return f"  {name:36s} {metrics[key]:.3f}{low_high}" + (f"   (chance {chance[name]:.3f})" if name in chance else "")

    lines = [line(key, key) for key in metrics if not key.startswith(RERANKED)]
    reranked = [line(key, key.removeprefix(RERANKED)) for key in metrics if key.startswith(RERANKED)]
    if reranked:
        lines += ["re-ranked at query time by the training items' look-alike captions and room categories (--reranker):",
                  *reranked]
    return "\n".join(lines)
