"""Matching-head re-ranking of the product text->image top hits."""
from __future__ import annotations

import numpy as np

from ..data.catalog import Catalog, Item
from .retrieval import EmbeddingCache, _same_caption_truth, image_embeddings, recall_at_k, text_embeddings


def _pairs(products: list[Item], shortlist: np.ndarray) -> tuple[list, list[str]]:
    """(image, query caption) of every shortlisted pair, query after query."""
    queries = np.repeat(np.arange(len(products)), shortlist.shape[1])  # a small split has fewer than `top`
    return [products[g].image for g in shortlist.reshape(-1)], [products[q].caption for q in queries]


def evaluate_reranking(
    model, catalog: Catalog, split: str = "test", top: int = 20, cache: EmbeddingCache | None = None
) -> dict[str, float]:
    """Product text->image R@1 by cosine, and after the matching head re-scores the cosine's top `top`."""
    cache = {} if cache is None else cache
    products = catalog.select(split, "product")
    truth = _same_caption_truth(products)
    scores = text_embeddings(model, [item.caption for item in products], cache) @ image_embeddings(model, products, cache).T
    shortlist = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    probabilities = model.match(*_pairs(products, shortlist)).reshape(shortlist.shape)
    picks = shortlist[np.arange(len(shortlist)), np.argmax(probabilities, axis=1)]
    return {
        "product_text2image_r1_contrastive": recall_at_k(scores, truth, (1,))[1],
        f"product_text2image_r1_rerank{top}": float(np.mean([int(p) in t for p, t in zip(picks, truth)])),
    }
