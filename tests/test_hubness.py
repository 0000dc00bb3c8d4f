"""The hubness correction: its penalty against hand-checked numbers, and a hub that stops crowding a ranking."""
import numpy as np
import pytest
import torch

from vislang.eval.retrieval import ranking_scores
from vislang.models.hubness import QueryBank

# Bank of 3 captions and 3 images in 2-D. Image gallery rows are penalised by their closeness to
# the captions, caption gallery rows by their closeness to the images.
TEXTS = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
IMAGES = torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])


def _bank(k: int, weight: float) -> QueryBank:
    bank = QueryBank(3, 2, k, weight)
    bank.fill(TEXTS, IMAGES)
    return bank


def test_penalty_is_weight_times_the_mean_of_the_k_best_bank_cosines():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # [1, 0] against the captions: cosines 1.0, 0.8, 0.6 -> top 2 mean 0.9; [0, 1]: 0.0, 0.6, 0.8 -> 0.7
    assert torch.allclose(_bank(2, 0.5).penalty(gallery, "image"), torch.tensor([0.45, 0.35]))
    # against the images: [1, 0] -> 0.0, 0.6, 1.0 -> top 1 is 1.0; [0, 1] -> 1.0, 0.8, 0.0 -> 1.0
    assert torch.allclose(_bank(1, 2.0).penalty(gallery, "text"), torch.tensor([2.0, 2.0]))
    # k beyond the bank: every bank row counts
    assert torch.allclose(_bank(10, 1.0).penalty(gallery, "image"), torch.tensor([0.8, 1.4 / 3]))


def test_an_empty_bank_penalises_nothing_and_a_bad_modality_is_refused():
    bank = QueryBank(3, 2, 2, 1.0)
    assert torch.equal(bank.penalty(torch.ones(4, 2), "image"), torch.zeros(4))
    with pytest.raises(ValueError, match="modality"):
        _bank(2, 1.0).penalty(torch.ones(1, 2), "photo")
    with pytest.raises(ValueError, match="k must be"):
        QueryBank(3, 2, 0, 1.0)


class _Encoder:
    def __init__(self, bank: QueryBank | None) -> None:
        self.bank = bank

    def hubness_penalty(self, gallery: np.ndarray, modality: str) -> np.ndarray:
        return self.bank.penalty(torch.from_numpy(gallery), modality).numpy()


def test_a_hub_loses_the_top_rank_it_took_by_sitting_near_every_query():
    # The hub [1, 0] is the image nearest the query, but it is as near to most captions of the
    # bank (mean cosine 0.8); the true image [0, 1] is near fewer of them (0.467).
    hub, true = [1.0, 0.0], [0.0, 1.0]
    gallery = np.array([hub, true], np.float32)
    query = np.array([[0.74, 0.67]], np.float32)
    plain = query @ gallery.T
    assert plain[0, 0] > plain[0, 1]  # the hub wins on cosine: 0.74 against 0.67
    corrected = ranking_scores(_Encoder(_bank(3, 1.0)), query, gallery, "image")
    assert corrected[0, 1] > corrected[0, 0]  # penalties 0.8 and 0.467 turn it round
    np.testing.assert_allclose(corrected, plain - np.array([[0.8, 1.4 / 3]]), rtol=1e-6)


def test_an_encoder_without_a_penalty_ranks_by_cosine():
    queries, gallery = np.eye(2, dtype=np.float32), np.array([[0.6, 0.8], [1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(ranking_scores(object(), queries, gallery, "text"), queries @ gallery.T)


def test_rooms_rank_by_cosine_even_with_a_bank():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    query = np.array([[0.74, 0.67]], np.float32)
    encoder = _Encoder(_bank(3, 1.0))
    np.testing.assert_array_equal(ranking_scores(encoder, query, gallery, "image", "room"), query @ gallery.T)
    assert not np.array_equal(ranking_scores(encoder, query, gallery, "image", "product"), query @ gallery.T)
