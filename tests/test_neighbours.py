"""The caption decoder's retrieval store: lookups, and what a training run leaves in it."""
import json

import numpy as np
import pytest
import torch

import vislang
from vislang.models.neighbours import CaptionNeighbours


def _store(size=5, k=2):
    store = CaptionNeighbours(size, length=4, k=k, vocab_size=10, width=8, embed_dim=3, pad_id=0)
    store.set_captions(torch.arange(size * 4).remainder(9).add(1).view(size, 4))
    return store


def test_nearest_is_best_first_and_skips_itself_and_unseen_items():
    store = _store()
    directions = torch.eye(3)
    store.remember(torch.tensor([0, 1, 2]), torch.stack([directions[0], directions[0] * 0.9 + directions[1] * 0.1,
                                                         directions[1]]))
    query = directions[0][None]
    assert store.nearest(query).tolist() == [[0, 1]]
    assert store.nearest(query, exclude=torch.tensor([0])).tolist() == [[1, 2]]  # 3 and 4 were never stored
    store.remember(torch.tensor([4]), directions[0])
    assert store.nearest(query, exclude=torch.tensor([0])).tolist() == [[4, 1]]


def test_memory_holds_each_neighbours_tokens_in_rank_order():
    store = _store(k=2)
    store.remember(torch.arange(5), torch.eye(3)[[0, 1, 2, 0, 1]] * torch.tensor([[1.0], [1], [1], [0.5], [0.5]]))
    memory, ids = store(torch.eye(3)[:1])
    assert memory.shape == (1, 2 * 4, 8)
    assert ids.tolist() == [store.ids[0].tolist() + store.ids[3].tolist()]  # item 3 is second nearest
    # neighbour 0 (item 0) fills the first 4 positions; the same item at rank 1 would differ by its rank embedding
    swapped = store.norm(store.token(store.ids[[0]]) + store.previous(torch.cat([torch.zeros(1, 1, dtype=torch.long),
                                                                                      store.ids[[0], :-1]], 1))
                         + store.position + store.rank[0])
    assert torch.allclose(memory[0, :4], swapped[0], atol=1e-6)


def test_training_leaves_a_full_store_of_inference_embeddings(tiny_catalog, tmp_path):
    from vislang.config import load_config
    from vislang.train import train
    from test_heads import HEADS, ROOT

    out = train(load_config(ROOT / "configs" / "tiny.yaml", HEADS + ["train.epochs=2", "model.decoder.copy=true",
                                                                     "model.matching.neighbour_overlap=true"]),
                data=str(tiny_catalog), output=tmp_path / "run")
    model = vislang.load(out, device="cpu")
    store = model.model.neighbours
    assert store is not None and bool(store.filled.all())
    # the matching head's overlap weight was fitted on val after training, and the checkpoint has it
    fitted = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fitted = [row for row in fitted if row.get("event") == "fit_overlap_weights"]
    assert len(fitted) == 1 and fitted[0]["val_rerank_r1_fitted"] >= fitted[0]["val_rerank_r1_head"]
    assert model.model.matching.overlap_weights.tolist() == pytest.approx([fitted[0]["overlap_weight"] / 2] * 2)
    from vislang.data import read_catalog
    train_items = read_catalog(tiny_catalog).select("train")
    assert len(train_items) == len(store.embeddings)
    fresh = model.encode_images([item.image for item in train_items])
    agreement = np.sum(fresh * store.embeddings.numpy(), axis=1)
    assert agreement.min() > 0.98, agreement.min()


def test_overlap_counts_query_tokens_found_in_the_first_r_neighbours():
    store = _store(k=2)  # item i's caption: ids 4i+1 .. 4i+4 (mod 9, + 1)
    store.remember(torch.arange(5), torch.eye(3)[[0, 1, 2, 0, 1]] * torch.tensor([[1.0], [1], [1], [0.5], [0.5]]))
    # image along axis 0: neighbour 1 is item 0 (ids 1 2 3 4), neighbour 2 item 3 (ids 4 5 6 7)
    queries = torch.tensor([[1, 2, 0, 0],    # both tokens in neighbour 1
                            [5, 9, 3, 0],    # 3 in neighbour 1; 5 only in neighbour 2; 9 in neither
                            [0, 0, 0, 0]])   # nothing to count
    share = store.overlap(torch.eye(3)[:1], queries, ignore=torch.tensor([0]))
    assert share.shape == (1, 3, 2)
    torch.testing.assert_close(share[0], torch.tensor([[1.0, 1.0], [1 / 3, 2 / 3], [0.0, 0.0]]))
