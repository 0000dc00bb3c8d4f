"""Retrieval metrics on a catalog split, for any encoder with encode_images / encode_texts.

The figures are those of the embeddings themselves: every ranking is by cosine (`queries @
gallery.T`). Product queries are catalog captions; products that share a caption are
indistinguishable by it, so any of them counts as a hit. Room photo -> products searches every
product and scores the share of the room's listed products found in the top K, each product
scored by its photo and its catalog caption. Room photos are also classified by kind of room,
against prompts named after the categories (`room_category_acc`) and against paraphrases no
training text contains (`room_category_zeroshot_acc`, the zero-shot figure).

With a re-ranker (`reranker=RerankSettings()`, `vislang eval --reranker`) the text <-> image
figures are computed a second time with its query-time terms (vislang/ranking/), read from the
catalog's training items, and reported apart, under names prefixed `reranked_`.

Every metric is the mean over queries of a per-query score (`per_query_scores`), whose 95%
bootstrap interval `evaluate_with_intervals` gives (eval/bootstrap.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar

import numpy as np

from ..api import encode_readable_images
from ..data.catalog import Catalog, Item, category_prompt
from ..data.images import ImageLoadError, SkipCounter
from ..ranking import Bank, RerankSettings, Reranker
from ..ranking.room_category import ROOM_KIND
from .bootstrap import bootstrap_intervals

RERANKED = "reranked_"  # the prefix of the figures computed with the re-ranker


class Encoder(Protocol):
    def encode_images(self, items: Sequence, batch_size: int = 64) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray: ...


def recall_hits(scores: np.ndarray, truth: list[set[int]], ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per query [Q], 1.0 when at least one of its true items is in its top k, else 0.0; the mean is R@k."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return {k: np.array([float(bool(truth[q] & set(order[q, :k].tolist()))) for q in range(len(truth))]) for k in ks}


def recall_at_k(scores: np.ndarray, truth: list[set[int]], ks: Sequence[int]) -> dict[int, float]:
    """The usual R@k: the share of queries with at least one true item in their top k."""
    return {k: float(np.mean(hits)) for k, hits in recall_hits(scores, truth, ks).items()}


def coverage_per_query(scores: np.ndarray, truth: list[set[int]], k: int) -> np.ndarray:
    """Per query [Q], the share of its true items that are in its top k."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.array([len(truth[q] & set(order[q].tolist())) / len(truth[q]) for q in range(len(truth))])


def coverage_at_k(scores: np.ndarray, truth: list[set[int]], k: int) -> float:
    """Mean over queries of the share of the query's true items that are in its top k."""
    return float(np.mean(coverage_per_query(scores, truth, k)))


def _same_caption_truth(items: list[Item]) -> list[set[int]]:
    by_caption: dict[str, set[int]] = {}
    for index, item in enumerate(items):
        by_caption.setdefault(item.caption, set()).add(index)
    return [by_caption[item.caption] for item in items]


# image path (a Path) -> image embedding, text (a str) -> text embedding: shared by the evaluations of
# one model, so that each image and each caption is encoded once
EmbeddingCache = dict[Path | str, np.ndarray]


class UnreadableImages(ImageLoadError):
    """Images of a catalog that could not be read (path -> why); the readable ones encoded in the
    same call are in the cache already, so evaluating again without these costs little."""

    def __init__(self, errors: dict[Path, str]) -> None:
        super().__init__(f"{len(errors)} unreadable images; first: {next(iter(errors.values()))}")
        self.errors = errors


def image_embeddings(encoder: Encoder, items: list[Item], cache: EmbeddingCache) -> np.ndarray:
    """Embeddings of the items' images, encoding only those not already in `cache`; raises
    UnreadableImages (after caching the others) when some cannot be read."""
    missing = list(dict.fromkeys(item.image for item in items if item.image not in cache))
    if missing:
        vectors, kept, failed = encode_readable_images(encoder, missing)
        for position, row in zip(kept, vectors):
            cache[missing[position]] = row
        if failed:
            raise UnreadableImages({missing[position]: error for position, error in failed.items()})
    return _cached(encoder.encode_images, [item.image for item in items], cache)


Result = TypeVar("Result")


def skipping_unreadable(work: Callable[[Catalog], Result], catalog: Catalog) -> tuple[Result, Catalog]:
    """`work(catalog)`, run again without the items whose images turn out to be unreadable until
    none is: a catalog's broken files are skipped, with one counted warning, not a failed eval.
    Returns the result and the catalog it was computed on. Each pass finds every unreadable image
    of the first call that meets one, and the cache keeps what was encoded, so the passes are few
    and cheap; `work` must share one embedding cache across them."""
    unreadable: dict[Path, str] = {}
    while True:
        try:
            result = work(catalog)
            break
        except UnreadableImages as err:
            unreadable.update(err.errors)
            catalog = catalog.without_images(set(err.errors))
    SkipCounter(list(unreadable.values())).warn("images, whose items are left out of the evaluation")
    return result, catalog


def text_embeddings(encoder: Encoder, texts: list[str], cache: EmbeddingCache) -> np.ndarray:
    """Embeddings of the texts, encoding only those not already in `cache`."""
    return _cached(encoder.encode_texts, texts, cache)


def _cached(encode, keys: list, cache: EmbeddingCache) -> np.ndarray:
    if not keys:
        return encode([])
    missing = list(dict.fromkeys(key for key in keys if key not in cache))
    if missing:
        for key, row in zip(missing, encode(missing)):
            cache[key] = row
    return np.stack([cache[key] for key in keys])


def evaluate(encoder: Encoder, catalog: Catalog, split: str = "test", cache: EmbeddingCache | None = None) -> dict[str, float]:
    """Every retrieval metric the project reports, on one split of a catalog: the embeddings' own
    figures. Items whose images cannot be read are left out, with one counted warning."""
    cache = {} if cache is None else cache
    scores, _ = skipping_unreadable(lambda readable: per_query_scores(encoder, readable, split, cache), catalog)
    return metric_means(scores)


def evaluate_with_intervals(encoder: Encoder, catalog: Catalog, split: str = "test", cache: EmbeddingCache | None = None,
                            reranker: RerankSettings | None = None
                            ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """`evaluate`'s metrics (and with `reranker` the re-ranked ones), and each one's 95% bootstrap
    interval over the queries (eval/bootstrap.py)."""
    cache = {} if cache is None else cache
    scores, _ = skipping_unreadable(lambda readable: per_query_scores(encoder, readable, split, cache, reranker), catalog)
    return metric_means(scores), bootstrap_intervals(scores)


def metric_means(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """The metrics: the mean of each metric's per-query scores."""
    return {name: float(np.mean(scores)) for name, scores in per_query.items()}


def per_query_scores(encoder: Encoder, catalog: Catalog, split: str = "test", cache: EmbeddingCache | None = None,
                     reranker: RerankSettings | None = None) -> dict[str, np.ndarray]:
    """Every retrieval metric `evaluate` reports, as its per-query scores [Q] (their mean is the
    metric): a 0/1 hit per query for R@k and the room categories, the share of the room's products
    found for room photo -> products. With `reranker`, also the text <-> image metrics with its
    terms, named with the prefix `RERANKED`."""
    cache = {} if cache is None else cache
    metrics = text_image_scores(encoder, catalog, split, cache)
    rooms = catalog.select(split, "room")
    if rooms:
        room_images = image_embeddings(encoder, rooms, cache)
        metrics.update(_room_to_products(encoder, catalog, rooms, room_images, cache))
        metrics.update(_room_categories(encoder, catalog, rooms, room_images, cache))
    if reranker is not None:
        reranked = text_image_scores(encoder, catalog, split, cache, catalog_reranker(encoder, catalog, cache, reranker))
        metrics.update({RERANKED + name: hits for name, hits in reranked.items()})
    return metrics


def text_image_scores(encoder: Encoder, catalog: Catalog, split: str, cache: EmbeddingCache,
                      reranker: Reranker | None = None) -> dict[str, np.ndarray]:
    """Per-query hits of product text -> image and image -> text R@1/5/10 and room title -> image
    R@1/5: by cosine, plus the `reranker`'s terms when given."""
    metrics: dict[str, np.ndarray] = {}
    products = catalog.select(split, "product") or catalog.select(split, "image")
    if products:
        images = image_embeddings(encoder, products, cache)
        texts = text_embeddings(encoder, [item.caption for item in products], cache)
        truth, kind, keys = _same_caption_truth(products), products[0].kind, _keys(products)
        text2image, image2text = texts @ images.T, images @ texts.T
        if reranker is not None:
            text2image = reranker.text_to_image(text2image, texts, images, kind, image_keys=keys)
            image2text = reranker.image_to_text(image2text, images, texts, kind, image_keys=keys)
        for k, hits in recall_hits(text2image, truth, (1, 5, 10)).items():
            metrics[f"product_text2image_r{k}"] = hits
        for k, hits in recall_hits(image2text, truth, (1, 5, 10)).items():
            metrics[f"product_image2text_r{k}"] = hits
    rooms = catalog.select(split, "room")
    if rooms:
        images = image_embeddings(encoder, rooms, cache)
        titles = text_embeddings(encoder, [item.caption for item in rooms], cache)
        title2image = titles @ images.T
        if reranker is not None:  # the titles are the rooms' own: a training room lends neither to itself
            title2image = reranker.text_to_image(title2image, titles, images, ROOM_KIND, _keys(rooms), _keys(rooms))
        for k, hits in recall_hits(title2image, _same_caption_truth(rooms), (1, 5)).items():
            metrics[f"room_title2image_r{k}"] = hits
    return metrics


def catalog_reranker(encoder: Encoder, catalog: Catalog, cache: EmbeddingCache | None = None,
                     settings: RerankSettings = RerankSettings()) -> Reranker:
    """The re-ranker whose banks are the catalog's training items of each kind (vislang/ranking/)."""
    cache = {} if cache is None else cache
    banks = {}
    for kind in dict.fromkeys(item.kind for item in catalog.select("train")):
        items = catalog.select("train", kind)
        categories = tuple(item.meta.get("category") for item in items) if kind == ROOM_KIND else ()
        banks[kind] = Bank(image_embeddings(encoder, items, cache),
                           text_embeddings(encoder, [item.caption for item in items], cache), _keys(items), categories)
    return Reranker(banks, settings)


def _keys(items: list[Item]) -> tuple[Path, ...]:
    """The items' identities for the re-ranker: their images, as its banks name them."""
    return tuple(item.image for item in items)


def _room_to_products(encoder, catalog, rooms, room_images, cache) -> dict[str, np.ndarray]:
    """Room photo -> products R@50 (per room) over every product of the catalog, each product scored as
    `room_product_scores` says; `room2product_photos_r50` scores the photo alone."""
    gallery = catalog.select(None, "product")
    position = {item.id: i for i, item in enumerate(gallery)}
    with_truth = [(r, {position[p] for p in room.links if p in position}) for r, room in enumerate(rooms)]
    with_truth = [(r, truth) for r, truth in with_truth if truth]
    if not gallery or not with_truth:
        return {}
    scores = room_product_scores(encoder, catalog, room_images[[r for r, _ in with_truth]], cache)
    truth = [t for _, t in with_truth]
    return {"room2products_r50": coverage_per_query(scores["photos"] + scores["captions"], truth, 50),
            "room2product_photos_r50": coverage_per_query(scores["photos"], truth, 50)}


def room_product_scores(encoder: Encoder, catalog: Catalog, room_images: np.ndarray,
                        cache: EmbeddingCache | None = None) -> dict[str, np.ndarray]:
    """Each room photo's scores [Q, P] for every product of the catalog (in `catalog.select(None,
    "product")` order), whose sum ranks them: "photos", the cosine with the product's photo;
    "captions", with its catalog caption (training makes a room a positive for the texts of the
    products it shows, as for their photos)."""
    cache = {} if cache is None else cache
    gallery = catalog.select(None, "product")
    return {"photos": room_images @ image_embeddings(encoder, gallery, cache).T,
            "captions": room_images @ text_embeddings(encoder, [item.caption for item in gallery], cache).T}


# IKEA room category (lower case) -> a paraphrase for the zero-shot prompt "a photo of {paraphrase}".
# Their distinctive words (slumber, lounge, galley, supper, toddler, playroom, backyard, patio,
# paperwork, entrance, corridor, utility) appear in no training text of the IKEA catalog, whose room
# sentences name the categories themselves ("a bedroom with bed, wardrobe"); `zero_shot_prompts`
# checks each catalog at eval time.
ZERO_SHOT_PARAPHRASES = {
    "bedroom": "a place to slumber",
    "living room": "a lounge",
    "kitchen": "a galley",
    "dining": "a place for supper",
    "baby children room": "a toddler's playroom",
    "outdoor": "a backyard patio",
    "home office": "a place for paperwork",
    "hallway": "an entrance corridor",
    "laundry": "a utility room",
}


def zero_shot_prompts(catalog: Catalog, categories: Sequence[str]) -> list[str] | None:
    """The paraphrase prompt of each category, or None when one has no paraphrase or when any
    paraphrase occurs (case-insensitive) in a text of the catalog's training split: a figure read
    with it would not be zero-shot."""
    paraphrases = [ZERO_SHOT_PARAPHRASES.get(category.lower()) for category in categories]
    if any(p is None for p in paraphrases):
        return None
    texts = [text.lower() for item in catalog.select("train") for text in item.texts]
    if any(p.lower() in text for p in paraphrases for text in texts):
        return None
    return [f"a photo of {p}" for p in paraphrases]


def _room_categories(encoder, catalog, rooms, room_images, cache) -> dict[str, np.ndarray]:
    """Per room, 1.0 when its photo is nearest the prompt of its own category (of those of the
    catalog's rooms): `room_category_acc` with "a photo of a {category}", whose words the training
    recipe's room sentences contain ("a bedroom with bed, wardrobe"), and `room_category_zeroshot_acc` with
    `zero_shot_prompts`, only when the catalog allows them."""
    categories = sorted({item.meta.get("category") for item in catalog.select(None, "room")} - {None, ""})
    if len(categories) < 2:
        return {}
    truth = np.asarray([categories.index(room.meta["category"]) if room.meta.get("category") in categories else -1
                        for room in rooms])
    out = {}
    named = [category_prompt(c) for c in categories]
    for name, prompts in (("room_category_acc", named), ("room_category_zeroshot_acc", zero_shot_prompts(catalog, categories))):
        if prompts is not None:
            predicted = np.argmax(room_images @ text_embeddings(encoder, prompts, cache).T, axis=1)
            out[name] = (predicted == truth).astype(np.float64)
    return out


def chance_levels(catalog: Catalog, split: str = "test") -> dict[str, float]:
    """What a random ranking scores on average, to read the metrics against."""
    products, rooms = catalog.select(split, "product"), catalog.select(split, "room")
    out: dict[str, float] = {}
    if products:
        sizes = [len(t) for t in _same_caption_truth(products)]
        out["product_text2image_r10"] = float(np.mean([min(1.0, 1 - _miss(len(products), s, 10)) for s in sizes]))
    if rooms:
        out["room_title2image_r5"] = min(1.0, 5 / len(rooms))
        every_product = len(catalog.select(None, "product"))
        out["room2products_r50"] = out["room2product_photos_r50"] = min(1.0, 50 / max(1, every_product))
    return out


def _miss(n: int, good: int, k: int) -> float:
    """Probability that k random picks out of n contain none of `good` items."""
    p = 1.0
    for i in range(min(k, n)):
        if n - good - i <= 0:
            return 0.0
        p *= (n - good - i) / (n - i)
    return p
