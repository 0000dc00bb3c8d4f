"""Caption quality (BLEU-4, CIDEr via pycocoevalcap) on a catalog split, with 95% bootstrap intervals.

Captions are scored against the product's catalog caption and its description when it has one.
The baseline a generated caption must beat is retrieval: caption each test photo with the catalog
caption of the training product whose image embedding is nearest. The decoder's gain over it is
resampled in pairs (the same products for both), so its interval says whether it is real.

Corpus BLEU-4 is not a mean over captions: each caption's n-gram counts are kept
(`CaptionStats.bleu`, as pycocoevalcap's BleuScorer counts them) and the corpus score is
recomputed on each bootstrap resample. CIDEr is the mean of per-caption scores (document
frequencies from the whole split), resampled like a retrieval metric.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data.catalog import Catalog, Item
from .bootstrap import percentile_interval, resample_indices
from .retrieval import EmbeddingCache, image_embeddings

_WORD = re.compile(r"[a-z0-9]+")
_TINY, _SMALL = 1e-15, 1e-9  # BleuScorer's guards against empty counts, kept so that scores agree
Interval = tuple[float, float]


def _words(text: str) -> str:
    # pycocoevalcap's own PTB tokenizer needs Java; lower-cased alphanumeric words are equivalent here.
    return " ".join(_WORD.findall(text.lower()))


@dataclass
class CaptionStats:
    """What corpus BLEU-4 and CIDEr are made of, per caption."""

    bleu: np.ndarray  # [N, 10]: length, closest reference length, guessed n-grams (n = 1..4), correct n-grams
    cider: np.ndarray  # [N]

    def bleu4(self, rows: np.ndarray | slice = slice(None)) -> float:
        """Corpus BLEU-4 of some captions, as pycocoevalcap's Bleu(4) computes it."""
        total = self.bleu[rows].sum(axis=0)
        length, ref_length, guessed, correct = total[0], total[1], total[2:6], total[6:10]
        score = float(np.prod((correct + _TINY) / (guessed + _SMALL)) ** 0.25)
        ratio = (length + _TINY) / (ref_length + _SMALL)
        return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


def caption_stats(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> CaptionStats:
    """Each prediction's BLEU counts against its references, and its CIDEr score."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
    from pycocoevalcap.cider.cider import Cider

    res = {i: [_words(p) or "empty"] for i, p in enumerate(predictions)}
    gts = {i: [_words(r) for r in refs if _words(r)] for i, refs in enumerate(references)}
    bleu = np.zeros((len(res), 10))
    for i in range(len(res)):
        counts = cook_test(res[i][0], cook_refs(gts[i]), eff="closest")
        bleu[i] = [counts["testlen"], counts["reflen"], *counts["guess"], *counts["correct"]]
    _, cider = Cider().compute_score(gts, res)
    return CaptionStats(bleu, np.asarray(cider, dtype=np.float64))


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr of predictions[i] against references[i]."""
    stats = caption_stats(predictions, references)
    return {"bleu4": stats.bleu4(), "cider": float(stats.cider.mean())}


def references(item: Item) -> list[str]:
    description = (item.meta or {}).get("description") or ""
    return [item.caption] + ([description] if description else [])


def evaluate_captions(model, catalog: Catalog, split: str = "test", cache: EmbeddingCache | None = None
                      ) -> tuple[dict[str, float], dict[str, Interval], list[str]]:
    """The decoder's captions (`model.caption`, default settings) and the nearest-neighbour
    retrieval baseline's on the split's products: BLEU-4, CIDEr, the decoder's gain over the
    baseline, the share of the first 100 that name the product's type; each with its 95% interval.
    Returns (metrics, intervals, the generated captions)."""
    products = catalog.select(split, "product")
    train = catalog.select("train", "product")
    refs = [references(item) for item in products]
    generated = model.caption([item.image for item in products])
    cache = {} if cache is None else cache
    test_emb, train_emb = image_embeddings(model, products, cache), image_embeddings(model, train, cache)
    retrieved = [train[i].caption for i in np.argmax(test_emb @ train_emb.T, axis=1)]
    decoder, retrieval = caption_stats(generated, refs), caption_stats(retrieved, refs)
    resamples = resample_indices(len(products))
    values: dict[str, float] = {}
    spread: dict[str, np.ndarray] = {}
    for name, stats in (("caption", decoder), ("retrieval_caption", retrieval)):
        values[f"{name}_bleu4"], spread[f"{name}_bleu4"] = stats.bleu4(), np.array([stats.bleu4(r) for r in resamples])
        values[f"{name}_cider"], spread[f"{name}_cider"] = stats.cider.mean(), stats.cider[resamples].mean(axis=1)
    for score in ("bleu4", "cider"):  # paired: the same resampled products for both
        values[f"caption_{score}_gain"] = values[f"caption_{score}"] - values[f"retrieval_caption_{score}"]
        spread[f"caption_{score}_gain"] = spread[f"caption_{score}"] - spread[f"retrieval_caption_{score}"]
    first = slice(0, 100)
    for name, captions in (("caption", generated), ("retrieval_caption", retrieved)):
        named = names_type(captions[first], products[first])
        values[f"{name}_names_type"] = float(named.mean())
        spread[f"{name}_names_type"] = named[resample_indices(len(named))].mean(axis=1)
    metrics = {name: float(value) for name, value in values.items()}
    return metrics, {name: percentile_interval(resampled) for name, resampled in spread.items()}, generated


def names_type(captions: Sequence[str], items: Sequence[Item]) -> np.ndarray:
    """1.0 for each caption that contains a content word (3+ letters) of its product's type, else 0.0."""
    hits = []
    for caption, item in zip(captions, items):
        type_words = {w for w in _words(item.meta.get("type") or "").split() if len(w) >= 3 and not w.isdigit()}
        hits.append(float(bool(type_words & set(_words(caption).split()))))
    return np.asarray(hits)
