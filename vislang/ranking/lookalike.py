"""An image described by the captions of the training images that look like it.

A test photo of a "MALM chest of 2 drawers" is seldom what the tower has learned to call MALM, but
its nearest training photos are often MALM chests in other colours or sizes, and their catalog
captions carry the name, type and colour words a query is made of. Each gallery image gets the
kernel-weighted mean of its look-alikes' caption embeddings, weights exp(cos(image, training
image) / temperature), normalised; the re-ranker (reranker.py) adds weight x the query's cosine
with it (a text query against images) or the same term on the query's side (an image query
against texts). It is a kernel regression over the training items of the same kind, so it needs
only their photos and captions, read at query time: nothing of it is in the model.
"""
from __future__ import annotations

import numpy as np


def kernel_weights(queries: np.ndarray, bank: np.ndarray, temperature: float,
                   exclude: np.ndarray | None = None) -> np.ndarray:
    """[N, B] rows summing to 1: softmax over the bank [B, D] of each query's [N, D] cosine / temperature.

    exclude [N, B] (bool) gives bank items no weight; a row with every item excluded is all zeros."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(bank) == 0:
        return np.zeros((len(queries), 0), np.float32)
    logits = queries @ bank.T / temperature
    if exclude is not None:
        logits = np.where(exclude, -np.inf, logits)
    top = logits.max(axis=1, keepdims=True)
    # exp of the nearest is 1: no overflow at small temperatures
    weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    return weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-30)


def lookalike_texts(images: np.ndarray, bank_images: np.ndarray, bank_texts: np.ndarray, temperature: float,
                    exclude: np.ndarray | None = None) -> np.ndarray:
    """[N, D] unit vectors: for each image embedding [N, D], the weighted mean of the caption
    embeddings bank_texts [B, D] of the training images bank_images [B, D] like it.

    exclude [N, B] (bool) drops bank items from an image's mean: an image that is itself in the
    bank must not borrow its own caption."""
    mean = kernel_weights(images, bank_images, temperature, exclude) @ bank_texts
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(np.float32)
