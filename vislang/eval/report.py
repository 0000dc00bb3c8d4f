"""Everything `vislang eval` reports for a trained model, and its text table."""
from __future__ import annotations

from ..data.catalog import Catalog
from .captioning import evaluate_captions
from .reranking import evaluate_reranking
from .retrieval import EmbeddingCache, chance_levels, evaluate


def evaluate_model(model, catalog: Catalog, split: str = "test", cache: EmbeddingCache | None = None) -> dict[str, float]:
    """Retrieval metrics, plus caption scores and re-ranking when the model has those heads.

    All of them share one embedding cache, so each image and each caption is encoded once.
    """
    cache = {} if cache is None else cache
    metrics = evaluate(model, catalog, split, cache)
    if model.model.decoder is not None and catalog.select(split, "product"):
        metrics.update(evaluate_captions(model, catalog, split, cache=cache)[0])
    if model.model.matching is not None and catalog.select(split, "product"):
        metrics.update(evaluate_reranking(model, catalog, split, cache=cache))
    return metrics


def format_report(metrics: dict[str, float], catalog: Catalog, split: str) -> str:
    chance = chance_levels(catalog, split)
    return "\n".join(
        f"  {key:36s} {value:.3f}" + (f"   (chance {chance[key]:.3f})" if key in chance else "")
        for key, value in metrics.items()
    )
