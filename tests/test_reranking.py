"""Re-ranking of the cosine top hits by the matching head."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vislang.data.catalog import Catalog, Item
from vislang.eval.reranking import evaluate_reranking


class _FakeModel:
    """Four products; text i is closest (by cosine) to image (i + 1) % 4, except text 3; the
    matching head knows the true pairs."""

    def __init__(self) -> None:
        self.index = {}

    def encode_images(self, paths, batch_size=64):
        return np.eye(4, dtype=np.float32)[[self.index[Path(p)] for p in paths]]

    def encode_texts(self, texts, batch_size=256):
        rows = np.full((len(texts), 4), 0.1, np.float32)
        for row, text in enumerate(texts):
            i = int(text.split()[-1])
            rows[row, i] = 0.5
            rows[row, (i + 1) % 4] = 0.6 if i != 3 else 0.2
        return rows

    def match(self, images, texts, batch_size=64):
        same = [self.index[Path(p)] == int(t.split()[-1]) for p, t in zip(images, texts)]
        return np.where(same, 0.9, 0.1)


def _catalog(model: _FakeModel) -> Catalog:
    items = [Item(str(i), "product", Path(f"/p/{i}.jpg"), (f"product {i}",), "val") for i in range(4)]
    model.index = {item.image: i for i, item in enumerate(items)}
    return Catalog(items, Path("/p"))


def test_the_head_reorders_the_cosine_shortlist():
    model = _FakeModel()
    catalog = _catalog(model)
    metrics, intervals = evaluate_reranking(model, catalog, "val", top=1)
    assert metrics == {"product_text2image_r1_contrastive": 0.25, "product_text2image_r1_rerank1": 0.25,
                       "product_text2image_r1_rerank1_gain": 0.0}
    metrics, intervals = evaluate_reranking(model, catalog, "val", top=3)
    assert metrics["product_text2image_r1_rerank3"] == 1.0 and metrics["product_text2image_r1_rerank3_gain"] == 0.75
    low, high = intervals["product_text2image_r1_rerank3_gain"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0 and low < high  # 4 queries: a wide interval around the gain
    assert evaluate_reranking(model, catalog, "val")[0]["product_text2image_r1_rerank20"] == 1.0  # top > products
