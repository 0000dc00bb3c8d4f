"""Query vectors from texts, photos or both, and re-ranking of the top hits by the matching head."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..api import VisLang
from ..data.images import ImageLike
from .errors import QueryError
from .hits import Hit

# A photo+text query is the normalised sum (1 - w) * photo + w * text. bench/search.py measures,
# on IKEA with the CPU recipe, the share of the top 10 with the photo's type AND the asked colour
# (58 product photos): for "in <colour>" it peaks at w = 0.5-0.6 and falls off on both sides (the
# photo alone, or the text alone, loses one of the two); for "<type> in <colour>" it rises up to
# w = 0.7 and stays flat beyond (that text names both by itself). 0.6 serves both phrasings.
DEFAULT_TEXT_WEIGHT = 0.6
MAX_K = 2048  # faiss on a GPU returns at most 2048 neighbours; the same limit everywhere


def as_texts(texts: str | Sequence[str] | None) -> list[str]:
    if texts is None:
        return []
    return [texts] if isinstance(texts, str) else list(texts)


def as_images(images: ImageLike | Sequence[ImageLike] | None) -> list[ImageLike]:
    if images is None:
        return []
    return [images] if isinstance(images, (str, os.PathLike, Image.Image)) else list(images)


def check_query(texts: list[str], images: list[ImageLike], k: int, rerank: int | None, text_weight: float,
                reranker: bool = False) -> None:
    """Refuse what cannot be searched before any model is loaded or anything is encoded."""
    if not texts and not images:
        raise QueryError("empty query: give a text, an image or both")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise QueryError("empty query text")
    if texts and images and len(texts) != len(images):
        raise QueryError(f"a photo+text query pairs texts and images one to one ({len(texts)} texts, {len(images)} images)")
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K} (got {k})")
    if rerank is not None:
        if not 1 <= rerank <= MAX_K:
            raise QueryError(f"--rerank must be between 1 and {MAX_K} (got {rerank})")
        if not texts:
            raise QueryError("re-ranking needs a text query: the matching head scores image-text pairs")
    if reranker and not texts:
        raise QueryError("the re-ranker needs a text query: its terms compare a text with the training items' captions")
    if not 0.0 <= text_weight <= 1.0:
        raise QueryError(f"the text weight must be between 0 and 1 (got {text_weight})")


def normalize(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def mix(photo: np.ndarray, text: np.ndarray, text_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """The unit vectors of (1 - w) * photo + w * text [Q, D], and the text's coefficient in each
    after normalising [Q]: the share of the query that is a text, which the re-ranker's terms scale by."""
    summed = (1.0 - text_weight) * photo + text_weight * text
    norms = np.maximum(np.linalg.norm(summed, axis=1), 1e-12)
    return (summed / norms[:, None]).astype(np.float32), (text_weight / norms).astype(np.float32)


def query_vectors(model: VisLang, texts: list[str], images: list[ImageLike],
                  text_weight: float = DEFAULT_TEXT_WEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """[Q, D] unit query vectors (a text, a photo, or "like this photo, but in oak": their weighted
    sum) and [Q] text shares (1 for a text, 0 for a photo; see `mix`)."""
    text = model.encode_texts(texts) if texts else None
    photo = model.encode_images(images) if images else None
    if text is None:
        return photo, np.zeros(len(photo), np.float32)
    if photo is None:
        return text, np.ones(len(text), np.float32)
    return mix(photo, text, text_weight)


def rerank(model: VisLang, text: str, hits: list[Hit], n: int) -> list[Hit]:
    """Re-score the top n hits with the matching head (P(image matches text)) and order them by it;
    hits beyond n keep their place after them."""
    head, tail = hits[:n], hits[n:]
    if not head:
        return hits
    probabilities = model.match([hit.image for hit in head], [text] * len(head))
    scored = [hit.with_rerank(p) for hit, p in zip(head, probabilities)]
    scored.sort(key=lambda hit: -hit.rerank_score)
    return scored + tail
