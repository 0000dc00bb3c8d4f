"""Caption quality (BLEU-4, CIDEr via pycocoevalcap) on a catalog split.

Captions are scored against the product's catalog caption and its description when it has one.
The baseline a generated caption must beat is retrieval: caption each test photo with the catalog
caption of the training product whose image embedding is nearest.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..data.catalog import Catalog, Item
from .retrieval import EmbeddingCache, image_embeddings

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> str:
    # pycocoevalcap's own PTB tokenizer needs Java; lower-cased alphanumeric words are equivalent here.
    return " ".join(_WORD.findall(text.lower()))


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr of predictions[i] against references[i]."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    res = {i: [_words(p) or "empty"] for i, p in enumerate(predictions)}
    gts = {i: [_words(r) for r in refs if _words(r)] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


def references(item: Item) -> list[str]:
    description = (item.meta or {}).get("description") or ""
    return [item.caption] + ([description] if description else [])


def evaluate_captions(
    model, catalog: Catalog, split: str = "test", num_beams: int = 3, cache: EmbeddingCache | None = None
) -> tuple[dict[str, float], list[str]]:
    """Decoder and nearest-neighbour-retrieval caption scores on the split's products."""
    products = catalog.select(split, "product")
    train = catalog.select("train", "product")
    refs = [references(item) for item in products]
    generated = model.caption([item.image for item in products], num_beams=num_beams)
    cache = {} if cache is None else cache
    test_emb, train_emb = image_embeddings(model, products, cache), image_embeddings(model, train, cache)
    nearest = np.argmax(test_emb @ train_emb.T, axis=1)
    retrieved = [train[i].caption for i in nearest]
    metrics = {f"caption_{k}": v for k, v in caption_scores(generated, refs).items()}
    metrics.update({f"retrieval_caption_{k}": v for k, v in caption_scores(retrieved, refs).items()})
    metrics["caption_names_type"] = names_type_share(generated[:100], products[:100])
    metrics["retrieval_caption_names_type"] = names_type_share(retrieved[:100], products[:100])
    return metrics, generated


def names_type_share(captions: Sequence[str], items: Sequence[Item]) -> float:
    """Share of captions that contain a content word (3+ letters) of the product's type."""
    hits = 0
    for caption, item in zip(captions, items):
        type_words = {w for w in _words(item.meta.get("type") or "").split() if len(w) >= 3 and not w.isdigit()}
        hits += bool(type_words & set(_words(caption).split()))
    return hits / max(1, len(captions))
