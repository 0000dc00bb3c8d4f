"""Caption decoder: its pretrained start, Hugging Face generation (cache equivalence, modes), learning, the loss."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vislang.models.decoder import CaptionDecoder
from vislang.models.text_tower import resolve_text_source

VOCAB, IMAGE_WIDTH, N_TOKENS = 50, 8, 5
SPECIAL = {"pad_id": 0, "bos_id": 1, "eos_id": 2}
PAD, BOS, EOS = 0, 1, 2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_bert(tmp_path_factory) -> str:
    """A BERT config small enough for many decoding runs (the decoder is built from it, not trained)."""
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("small-bert")
    BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(folder)
    return str(folder)


def _decoder(source: str, seed: int = 0, max_length: int = 17) -> CaptionDecoder:
    """A random decoder that behaves like an arbitrary function of prefix and image.

    With the default init (std 0.02) every step gives nearly the same distribution; larger
    random weights give varied tokens, captions that stop at EOS at different steps and beams
    that differ from greedy, so the checks below have something to compare.
    """
    torch.manual_seed(seed)
    decoder = CaptionDecoder(source, IMAGE_WIDTH, list(range(VOCAB)), SPECIAL, layers=2, max_length=max_length,
                             pretrained=False)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "LayerNorm" in name or "norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
            elif p.ndim == 2:
                p.normal_(0.0, 2.0 * p.shape[1] ** -0.5)
            else:
                p.normal_(0.0, 0.5)
    # float64: cached and uncached paths differ only by rounding, far below any argmax margin
    return decoder.double().eval()


def _images(batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N_TOKENS, IMAGE_WIDTH, generator=g, dtype=torch.float64)


def _pad(captions: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([[BOS, *c, EOS] + [PAD] * (length - len(c) - 2) for c in captions])


def test_starts_from_the_text_models_first_layers_and_word_embeddings(tmp_path: Path):
    from transformers import AutoModel

    source = resolve_text_source("minilm-l6")
    rows = [0, 101, 102, 2793, 3829, 5216]  # pad, [CLS], [SEP] and three words
    decoder = CaptionDecoder(source, IMAGE_WIDTH, rows, {"pad_id": 0, "bos_id": 1, "eos_id": 2}, layers=2)
    bert = AutoModel.from_pretrained(source)
    assert torch.equal(decoder.lm.bert.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight[rows])
    for i in range(2):
        ours, theirs = decoder.lm.bert.encoder.layer[i], bert.encoder.layer[i]
        assert torch.equal(ours.attention.self.query.weight, theirs.attention.self.query.weight)
        assert torch.equal(ours.output.dense.weight, theirs.output.dense.weight)
        assert hasattr(ours, "crossattention")
    assert len(decoder.lm.bert.encoder.layer) == 2
    # the output layer is the word embeddings, over the decoder's own vocabulary
    assert decoder.lm.cls.predictions.decoder.weight.data_ptr() == decoder.lm.bert.embeddings.word_embeddings.weight.data_ptr()
    logits = decoder(torch.tensor([[1, 3, 4]]), torch.randn(1, N_TOKENS, IMAGE_WIDTH))
    assert logits.shape == (1, 3, len(rows))
    # a checkpoint rebuilds the same architecture from the saved config alone
    decoder.save_architecture(tmp_path)
    rebuilt = CaptionDecoder(str(tmp_path), IMAGE_WIDTH, rows, {"pad_id": 0, "bos_id": 1, "eos_id": 2}, layers=2,
                             pretrained=False)
    rebuilt.load_state_dict(decoder.state_dict())
    decoder.eval(), rebuilt.eval()
    image = torch.randn(2, N_TOKENS, IMAGE_WIDTH)
    assert torch.equal(decoder(torch.tensor([[1, 3, 4]] * 2), image), rebuilt(torch.tensor([[1, 3, 4]] * 2), image))


@pytest.mark.parametrize("mode", [{}, {"num_beams": 3}, {"do_sample": True, "seed": 4}])
def test_cached_equals_uncached(small_bert, mode):
    decoder, images = _decoder(small_bert), _images(4)
    cached = decoder.generate(images, max_length=12, use_cache=True, **mode)
    uncached = decoder.generate(images, max_length=12, use_cache=False, **mode)
    assert cached == uncached
    assert len({tuple(c) for c in cached}) > 1  # the images get different captions


def test_beam_of_one_equals_greedy(small_bert):
    decoder, images = _decoder(small_bert), _images(4)
    assert decoder.generate(images, max_length=12, num_beams=1) == decoder.generate(images, max_length=12)


def test_beam_search_returns_each_images_best_hypotheses_first(small_bert):
    decoder, images = _decoder(small_bert), _images(3)
    best = decoder.generate(images, max_length=12, num_beams=4)
    several = decoder.generate(images, max_length=12, num_beams=4, num_return_sequences=3)
    assert len(several) == 9
    assert [several[3 * i] for i in range(3)] == best
    with pytest.raises(ValueError, match="num_return_sequences"):
        decoder.generate(images, num_beams=2, num_return_sequences=3)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_equals_one_by_one(small_bert, num_beams):
    decoder, images = _decoder(small_bert), _images(4)
    batched = decoder.generate(images, max_length=12, num_beams=num_beams)
    alone = [decoder.generate(images[i : i + 1], max_length=12, num_beams=num_beams)[0] for i in range(4)]
    assert batched == alone


def test_sampling_reproducible_and_tiny_top_p_is_greedy(small_bert):
    decoder, images = _decoder(small_bert), _images(4)

    def sample(seed: int, **kw) -> list[list[int]]:
        return decoder.generate(images, max_length=10, do_sample=True, seed=seed, **kw)

    assert sample(3, top_p=0.95) == sample(3, top_p=0.95)
    assert sample(3, top_p=1.0, temperature=2.0) != decoder.generate(images, max_length=10)
    assert sample(5, top_p=1e-6, temperature=2.0) == decoder.generate(images, max_length=10)


@pytest.mark.parametrize("mode", [{}, {"num_beams": 3}, {"do_sample": True}])
def test_length_is_capped_and_eos_never_returned(small_bert, mode):
    decoder, images = _decoder(small_bert, max_length=9), _images(6)
    for limit, cap in ((5, 5), (100, 8)):  # capped by the decoder's positions (one is the BOS's)
        captions = decoder.generate(images, max_length=limit, **mode)
        assert max(len(c) for c in captions) <= cap
        assert all(EOS not in c and BOS not in c for c in captions)
    assert any(len(c) == 8 for c in decoder.generate(images, max_length=100, **mode))


def test_generate_restores_training_mode(small_bert):
    decoder = _decoder(small_bert).train()
    decoder.generate(_images(2), max_length=3)
    assert decoder.training


def test_loss_ignores_padding(small_bert):
    decoder, images = _decoder(small_bert), _images(2)
    captions = [[5, 6, 7], [8, 9]]
    short, long = _pad(captions, 6), _pad(captions, 10)
    with torch.no_grad():
        loss = decoder.loss(images, short)
        assert torch.allclose(loss, decoder.loss(images, long), rtol=0, atol=1e-10)
        # token mean over the non-pad targets, each caption scored on its own
        total = sum(
            decoder.loss(images[i : i + 1], _pad([c], len(c) + 2)) * (len(c) + 1) for i, c in enumerate(captions)
        )
    assert torch.allclose(loss, total / 7, rtol=0, atol=1e-10)


def test_learns_to_caption(small_bert):
    torch.manual_seed(0)
    decoder = CaptionDecoder(small_bert, IMAGE_WIDTH, list(range(VOCAB)), SPECIAL, layers=2, max_length=8,
                             pretrained=False)
    images = torch.randn(4, N_TOKENS, IMAGE_WIDTH)
    # shared tokens across captions force the decoder to read the image, and the
    # different lengths check that EOS stops each caption on its own
    captions = [[5, 6, 7], [5, 8, 9], [10, 6, 7], [11, 12, 13, 14]]
    targets = _pad(captions, 7)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    for _ in range(200):
        optimizer.zero_grad()
        loss = decoder.loss(images, targets)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    assert decoder.generate(images, max_length=8) == captions
    assert decoder.generate(images, max_length=8, num_beams=3) == captions
