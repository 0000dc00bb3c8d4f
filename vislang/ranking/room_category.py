"""A room title and a room photo should agree on the kind of room.

Room titles are slogans ("breathe in the scent of natural pinewood", "wake up and grow") and a
64-px photo hardly shows what is in it, yet both say which kind of room it is. Each side is
classified by its look-alikes among the training rooms: P(category | photo) is the kernel-weighted
share of each category among the training rooms whose photos are like the photo, P(category |
title) among those whose titles are like the title (weights exp(cos / temperature), as for the
look-alike captions). The re-ranker (reranker.py) adds weight x sum_c P(c | text) P(c | photo) to
a text's score for a room photo. Like the look-alike captions it needs only the training rooms'
photos, titles and categories, read at query time: nothing of it is in the model.
"""
from __future__ import annotations

import numpy as np

from .lookalike import kernel_weights

ROOM_KIND = "room"  # the kind of catalog item that has a category


def category_probabilities(embeddings: np.ndarray, bank: np.ndarray, labels: np.ndarray, categories: int,
                           temperature: float, exclude: np.ndarray | None = None) -> np.ndarray:
    """[N, categories]: for each embedding [N, D], the kernel-weighted share of each category among
    the training rooms' embeddings bank [B, D] of the same modality (photos or titles), whose
    categories are labels [B] (ints below `categories`). exclude [N, B] (bool): a training room
    must not vote for its own category; a row with nothing left is all zeros."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(bank) or (len(labels) and not 0 <= labels.min() <= labels.max() < categories):
        raise ValueError(f"labels must name one of {categories} categories for each of the {len(bank)} bank rooms")
    one_hot = np.zeros((len(bank), categories), np.float32)
    one_hot[np.arange(len(bank)), labels] = 1.0
    return (kernel_weights(embeddings, bank, temperature, exclude) @ one_hot).astype(np.float32)
