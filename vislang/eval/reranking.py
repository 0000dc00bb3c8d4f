"""Matching-head re-ranking of the product text->image top hits, with 95% bootstrap intervals."""
from __future__ import annotations

import numpy as np

from ..data.catalog import Catalog, Item
from .bootstrap import bootstrap_intervals
from .retrieval import EmbeddingCache, _same_caption_truth, image_embeddings, text_embeddings

Interval = tuple[float, float]


def _pairs(products: list[Item], shortlist: np.ndarray) -> tuple[list, list[str]]:
    """(image, query caption) of every shortlisted pair, query after query."""
    queries = np.repeat(np.arange(len(products)), shortlist.shape[1])  # a small split has fewer than `top`
    return [products[g].image for g in shortlist.reshape(-1)], [products[q].caption for q in queries]


def evaluate_reranking(model, catalog: Catalog, split: str = "test", top: int = 20, cache: EmbeddingCache | None = None
                       ) -> tuple[dict[str, float], dict[str, Interval]]:
    """Product text->image R@1 by cosine, after the matching head re-scores the cosine's top `top`,
    and the gain (paired: the same resampled queries for both), each with its 95% interval."""
    cache = {} if cache is None else cache
    products = catalog.select(split, "product")
    truth = _same_caption_truth(products)
    scores = text_embeddings(model, [item.caption for item in products], cache) @ image_embeddings(model, products, cache).T
    shortlist = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    probabilities = model.match(*_pairs(products, shortlist)).reshape(shortlist.shape)
    picks = shortlist[np.arange(len(shortlist)), np.argmax(probabilities, axis=1)]
    before = np.array([float(int(s[0]) in t) for s, t in zip(shortlist, truth)])
    after = np.array([float(int(p) in t) for p, t in zip(picks, truth)])
    per_query = {"product_text2image_r1_contrastive": before, f"product_text2image_r1_rerank{top}": after,
                 f"product_text2image_r1_rerank{top}_gain": after - before}
    return {name: float(hits.mean()) for name, hits in per_query.items()}, bootstrap_intervals(per_query)
