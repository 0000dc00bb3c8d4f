"""The opt-in re-ranker: two ranking terms read from the training items at query time.

The embeddings are the product: what `VisLang.encode_images` / `encode_texts` return is what the
index stores and what `vislang eval` scores by default (plain cosine). Two terms that read the
training split earned their place on top of them (val, the pretrained recipe, each toggled at
eval time):
- look-alike captions (lookalike.py): a text's cosine with the captions of the training images
  that look like the gallery image (+6.6 product text->image R@1, +4.4 image->text R@10, +24
  room title R@5);
- room categories (room_category.py): room title -> photo adds the chance that both name the
  same kind of room (+29 room title R@5).
Both need the training items' photo and caption embeddings and the rooms' categories, none of the
model's weights, so they are applied here, only when asked: `vislang eval --reranker`,
`vislang search --reranker`, `Index.search(reranker=True)`.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .lookalike import lookalike_texts
from .room_category import ROOM_KIND, category_probabilities


@dataclass(frozen=True)
class RerankSettings:
    """The terms' weights and kernel temperatures (chosen on val with the CPU recipe, docs/RESULTS.md)."""

    lookalike_weight: float = 1.0
    lookalike_temperature: float = 0.05
    room_category_weight: float = 1.6
    photo_temperature: float = 0.05  # P(category | room photo)
    text_temperature: float = 0.05  # P(category | text)


@dataclass(frozen=True)
class Bank:
    """The training items of one kind, which lend their captions and categories."""

    images: np.ndarray  # [B, D] unit photo embeddings
    captions: np.ndarray  # [B, D] unit embeddings of their captions (a room's: its title)
    keys: tuple[Hashable, ...]  # each item's identity (its image): an item never lends to itself
    categories: tuple[str | None, ...] = ()  # rooms: each one's kind of room (None or "": unknown)


class Reranker:
    """Adds the terms to score matrices of unit embeddings; `banks` maps a kind of item to its
    training items. A kind without a bank gets nothing added.

    `image_keys` / `text_keys` name the gallery or query items (the same identities as the banks'
    keys) so that a training item never borrows its own caption or category; None when no query
    or gallery item can be a training item."""

    def __init__(self, banks: Mapping[str, Bank], settings: RerankSettings = RerankSettings()) -> None:
        self.banks, self.settings = dict(banks), settings

    def text_to_image(self, scores: np.ndarray, texts: np.ndarray, images: np.ndarray, kind: str,
                      image_keys: Sequence[Hashable] | None = None,
                      text_keys: Sequence[Hashable] | None = None) -> np.ndarray:
        """scores [T, N] of texts [T, D] for images [N, D] of `kind`, plus the terms."""
        return scores + self.text_to_image_terms(texts, images, kind, image_keys, text_keys)

    def text_to_image_terms(self, texts: np.ndarray, images: np.ndarray, kind: str,
                            image_keys: Sequence[Hashable] | None = None,
                            text_keys: Sequence[Hashable] | None = None) -> np.ndarray:
        """[T, N]: what `text_to_image` adds: the texts' cosines with the images' look-alike captions,
        and for rooms the chance that text and photo name the same kind of room."""
        terms = np.zeros((len(texts), len(images)), np.float32)
        bank = self.banks.get(kind)
        if bank is None or not len(bank.keys):
            return terms
        if self.settings.lookalike_weight:
            terms += self.settings.lookalike_weight * (texts @ self._lookalikes(images, bank, image_keys).T)
        if kind == ROOM_KIND and self.settings.room_category_weight:
            terms += self._category_agreement(texts, images, bank, text_keys, image_keys)
        return terms

    def image_to_text(self, scores: np.ndarray, images: np.ndarray, texts: np.ndarray, kind: str,
                      image_keys: Sequence[Hashable] | None = None) -> np.ndarray:
        """scores [N, T] of images [N, D] of `kind` for texts [T, D], plus each image's look-alike
        captions' cosine with each text."""
        bank = self.banks.get(kind)
        if bank is None or not len(bank.keys) or not self.settings.lookalike_weight:
            return scores
        return scores + self.settings.lookalike_weight * (self._lookalikes(images, bank, image_keys) @ texts.T)

    def _lookalikes(self, images: np.ndarray, bank: Bank, keys: Sequence[Hashable] | None) -> np.ndarray:
        return lookalike_texts(images, bank.images, bank.captions, self.settings.lookalike_temperature,
                               _themselves(keys, bank.keys))

    def _category_agreement(self, texts: np.ndarray, images: np.ndarray, bank: Bank,
                            text_keys: Sequence[Hashable] | None, image_keys: Sequence[Hashable] | None) -> np.ndarray:
        """[T, N]: weight x sum_c P(c | text) P(c | photo), both from the bank's rooms of a known category."""
        known = [b for b, category in enumerate(bank.categories) if category]
        if not known:
            return np.zeros((len(texts), len(images)), np.float32)
        names = sorted({bank.categories[b] for b in known})
        labels = np.array([names.index(bank.categories[b]) for b in known])
        keys = tuple(bank.keys[b] for b in known)
        by_text = category_probabilities(texts, bank.captions[known], labels, len(names), self.settings.text_temperature,
                                         _themselves(text_keys, keys))
        by_photo = category_probabilities(images, bank.images[known], labels, len(names),
                                          self.settings.photo_temperature, _themselves(image_keys, keys))
        return self.settings.room_category_weight * (by_text @ by_photo.T)


def _themselves(keys: Sequence[Hashable] | None, bank_keys: Sequence[Hashable]) -> np.ndarray | None:
    """[N, B] bool: where bank item b is item n itself, which must not lend it anything (None: no key given)."""
    if keys is None:
        return None
    column = {key: b for b, key in enumerate(bank_keys)}
    mask = np.zeros((len(keys), len(bank_keys)), bool)
    for n, key in enumerate(keys):
        if key in column:
            mask[n, column[key]] = True
    return mask
