"""Embedding a collection for the index: batches with a progress bar, unreadable images skipped."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from ..api import VisLang, batch_starts
from ..data.images import ImageLike, ImageLoadError, SkipCounter


def embed_images(model: VisLang, images: Sequence[ImageLike], batch_size: int = 64, progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """[N_ok, D] embeddings and the positions in `images` they belong to.

    One bad file in a catalog of thousands should not stop a build: a batch that fails is
    retried image by image and the unreadable ones are skipped with one counted warning.
    """
    vectors: list[np.ndarray] = [np.zeros((0, model.model.cfg["embed_dim"]), np.float32)]
    kept: list[int] = []
    skipped = SkipCounter()
    with tqdm(total=len(images), desc="embedding images", unit="img", disable=not progress) as bar:
        for start in batch_starts(len(images), batch_size):
            batch = list(images[start : start + batch_size])
            try:
                vectors.append(model.encode_images(batch, batch_size=len(batch)))
                kept += range(start, start + len(batch))
            except ImageLoadError:
                for offset, image in enumerate(batch):
                    try:
                        vectors.append(model.encode_images([image]))
                        kept.append(start + offset)
                    except ImageLoadError as err:
                        skipped.add(err)
            bar.update(len(batch))
    skipped.warn("images")
    return np.concatenate(vectors), kept

