"""Re-ranking by the matching head, and fitting its neighbour-overlap weight on a split."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from vislang.data.catalog import Catalog, Item
from vislang.eval.reranking import evaluate_reranking, fit_overlap_weights


class _FakeModel:
    """Four products; text i is closest (contrastively) to image (i + 1) % 4, except text 3.

    The head's logit is the contrastive score; the overlap feature is 1 for the true pair and 0
    otherwise, so a large enough overlap weight fixes every query.
    """

    def __init__(self) -> None:
        self.model = SimpleNamespace(matching=SimpleNamespace(overlap_weights=torch.zeros(2)))
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

    def match_parts(self, images, texts, batch_size=64):
        image_ids = np.array([self.index[Path(p)] for p in images])
        text_ids = np.array([int(t.split()[-1]) for t in texts])
        logits = np.array([self.encode_texts([t])[0, i] for t, i in zip(texts, image_ids)], np.float32) * 10
        same = (image_ids == text_ids).astype(np.float32)
        return logits, np.stack([same, same], axis=1)

    def match(self, images, texts, batch_size=64):
        logits, overlap = self.match_parts(images, texts)
        return 1 / (1 + np.exp(-(logits + overlap @ self.model.matching.overlap_weights.numpy())))

    def set_overlap_weights(self, weights):
        self.model.matching.overlap_weights = torch.as_tensor(weights)


def _catalog(model: _FakeModel) -> Catalog:
    items = [Item(str(i), "product", Path(f"/p/{i}.jpg"), (f"product {i}",), "val") for i in range(4)]
    model.index = {item.image: i for i, item in enumerate(items)}
    return Catalog(items, Path("/p"))


def test_fitting_picks_the_smallest_weight_that_fixes_the_ranking_and_sets_it():
    model = _FakeModel()
    catalog = _catalog(model)
    before = evaluate_reranking(model, catalog, "val", top=3)
    assert before["product_text2image_r1_contrastive"] == 0.25 and before["product_text2image_r1_rerank3"] == 0.25
    fitted = fit_overlap_weights(model, catalog, "val", top=3)
    # the wrong image leads by 0.1 * 10 = 1 logit: a weight of 1 only ties (ties keep the first), 2 fixes it
    assert fitted == {"val_rerank_r1_head": 0.25, "val_rerank_r1_fitted": 1.0, "overlap_weight": 2.0}
    assert model.model.matching.overlap_weights.tolist() == [1.0, 1.0]  # the mean of the two overlaps, times 2
    assert evaluate_reranking(model, catalog, "val", top=3)["product_text2image_r1_rerank3"] == 1.0
    assert evaluate_reranking(model, catalog, "val")["product_text2image_r1_rerank20"] == 1.0  # top > products


def test_nothing_to_fit_without_an_overlap_head_or_products():
    model = _FakeModel()
    catalog = _catalog(model)
    assert fit_overlap_weights(model, catalog, "test") == {}
    model.model.matching.overlap_weights = None
    assert fit_overlap_weights(model, catalog, "val") == {}
