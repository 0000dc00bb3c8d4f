"""Matching-head re-ranking of the product text->image top hits, and fitting its overlap weights.

The matching head's neighbour-overlap weights (`model.matching.neighbour_overlap`) are fitted
here, on the validation split, after training rather than learned in it: on training images the
contrastive similarity is overfit, so a head that learned them trusted the similarity alone and
left the weights near zero (0.016 at most after 784 steps), while on unseen products the overlap
with the captions of their look-alikes is what the similarity misses. One weight is fitted, on
the mean of the overlaps with the 1, 2, ..., k nearest captions: choosing a single rank as well
followed val's noise (in that run val picked rank 3, which gained 4 points on val and 2 on
test, where the mean gained 5 and 6).
"""
from __future__ import annotations

import numpy as np

from ..data.catalog import Catalog, Item
from .retrieval import (
    EmbeddingCache,
    _same_caption_truth,
    image_embeddings,
    lookalike_texts,
    ranking_scores,
    recall_at_k,
    text_embeddings,
)

OVERLAP_WEIGHTS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0)  # logit units; the head's logits span ~10


def _shortlist(model, catalog: Catalog, products: list[Item], top: int, cache: EmbeddingCache | None):
    """Contrastive scores [Q, G] (as `vislang eval` ranks them), truth per query, and each query's `top` best gallery rows."""
    cache = {} if cache is None else cache
    images = image_embeddings(model, products, cache)
    scores = ranking_scores(model, text_embeddings(model, [item.caption for item in products], cache), images, "image",
                            lookalikes=lookalike_texts(model, catalog, products, images, cache))
    return scores, _same_caption_truth(products), np.argsort(-scores, axis=1, kind="stable")[:, :top]


def _pairs(products: list[Item], shortlist: np.ndarray) -> tuple[list, list[str]]:
    """(image, query caption) of every shortlisted pair, query after query."""
    queries = np.repeat(np.arange(len(products)), shortlist.shape[1])  # a small split has fewer than `top`
    return [products[g].image for g in shortlist.reshape(-1)], [products[q].caption for q in queries]


def _shortlist_logits(model, products: list[Item], shortlist: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The head's logits [Q, top] without the overlap term, and the overlap [Q, top, k] (or None)."""
    logits, overlap = model.match_parts(*_pairs(products, shortlist))
    shape = shortlist.shape
    return logits.reshape(shape), None if overlap is None else overlap.reshape(*shape, -1)


def _top1_recall(shortlist: np.ndarray, scores: np.ndarray, truth: list[set[int]]) -> float:
    picks = shortlist[np.arange(len(shortlist)), np.argmax(scores, axis=1)]
    return float(np.mean([int(p) in t for p, t in zip(picks, truth)]))


def evaluate_reranking(
    model, catalog: Catalog, split: str = "test", top: int = 20, cache: EmbeddingCache | None = None
) -> dict[str, float]:
    """Product text->image R@1 from the contrastive ranking, and after the matching head re-scores its top `top`."""
    products = catalog.select(split, "product")
    scores, truth, shortlist = _shortlist(model, catalog, products, top, cache)
    probabilities = model.match(*_pairs(products, shortlist))
    return {
        "product_text2image_r1_contrastive": recall_at_k(scores, truth, (1,))[1],
        f"product_text2image_r1_rerank{top}": _top1_recall(shortlist, probabilities.reshape(shortlist.shape), truth),
    }


def fit_overlap_weights(model, catalog: Catalog, split: str = "val", top: int = 20) -> dict[str, float]:
    """Choose the matching head's overlap weight by re-ranked R@1 on `split` and set it in the model.

    Returns the weight and the split's R@1 with the head alone and with the overlap ({} when the
    head reads no overlap or the split has no products). Ties go to the smaller weight."""
    head = model.model.matching
    products = catalog.select(split, "product")
    if head is None or head.overlap_weights is None or not products:
        return {}
    _, truth, shortlist = _shortlist(model, catalog, products, top, None)
    logits, overlap = _shortlist_logits(model, products, shortlist)
    mean_overlap = overlap.mean(axis=-1)
    before = _top1_recall(shortlist, logits, truth)
    best = (before, 0.0)
    for weight in OVERLAP_WEIGHTS:
        recall = _top1_recall(shortlist, logits + weight * mean_overlap, truth)
        if recall > best[0]:
            best = (recall, weight)
    k = overlap.shape[-1]
    model.set_overlap_weights(np.full(k, best[1] / k, np.float32))
    return {f"{split}_rerank_r1_head": before, f"{split}_rerank_r1_fitted": best[0], "overlap_weight": best[1]}
