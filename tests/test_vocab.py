"""The decoder's caption vocabulary and the caption-frequency weighting of its training rows."""
import torch

from vislang.data.catalog import Item
from vislang.models.vocab import CaptionVocab, caption_token_ids
from vislang.train.step import caption_rows, inverse_caption_frequency

SPECIAL = {"vocab_size": 50, "pad_id": 0, "bos_id": 1, "eos_id": 2}


def test_caption_token_ids_are_sorted_distinct_and_keep_the_special_ids():
    assert caption_token_ids([[1, 30, 7, 2, 0], [1, 7, 2]], SPECIAL) == [0, 1, 2, 7, 30]


def test_vocab_maps_to_decoder_ids_and_back():
    vocab = CaptionVocab([0, 1, 2, 7, 30], tokenizer_size=50, pad_id=0)
    assert len(vocab) == 5
    assert vocab.special_ids(SPECIAL) == {"vocab_size": 5, "pad_id": 0, "bos_id": 1, "eos_id": 2}
    assert vocab.to_decoder(torch.tensor([[1, 30, 7, 2]])).tolist() == [[1, 4, 3, 2]]
    assert vocab.to_tokenizer([1, 4, 3, 2]) == [1, 30, 7, 2]
    assert vocab.to_decoder(torch.tensor([8, 49])).tolist() == [0, 0]  # unknown ids -> pad


def test_repeated_captions_share_one_vote():
    items = [Item(str(i), "product", None, ("No name Wall clock",), "train") for i in range(8)]
    items += [Item("sofa", "product", None, ("KIVIK Sofa, grey",), "train")]
    weight = inverse_caption_frequency(items)
    assert torch.allclose(weight[:8], torch.full((8,), 1 / 8)) and weight[8] == 1.0
    generator = torch.Generator().manual_seed(0)
    draws = [int(r) for _ in range(400) for r in caption_rows(list(range(9)), weight, 1, generator)]
    assert 0.4 < draws.count(8) / len(draws) < 0.6  # the single sofa is drawn as often as all clocks together
    assert caption_rows(list(range(9)), weight, 0, generator).tolist() == list(range(9))
