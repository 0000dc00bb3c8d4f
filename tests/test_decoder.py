"""Caption decoder and generation: cache equivalence, decoding modes, learning, the loss."""
from __future__ import annotations

import pytest
import torch

from vislang.models.decoder import CaptionDecoder, KVCache
from vislang.models.generate import _beam_search, generate

VOCAB, IMAGE_WIDTH, N_TOKENS = 50, 8, 5
PAD, BOS, EOS = 0, 1, 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _decoder(seed: int = 0, max_length: int = 16) -> CaptionDecoder:
    """A random decoder that behaves like an arbitrary function of prefix and image.

    With the default init the tied embedding dominates the residual stream and the decoder
    just repeats its last token; larger random weights give varied tokens, captions that stop
    at EOS at different steps and beams that differ from greedy, so the checks below have
    something to compare.
    """
    torch.manual_seed(seed)
    decoder = CaptionDecoder(
        VOCAB, IMAGE_WIDTH, width=32, layers=2, heads=4, max_length=max_length, pad_id=PAD, bos_id=BOS, eos_id=EOS,
    )
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "embed" in name:
                p.normal_(0.0, 0.5 if name.startswith("token") else 1.0)
            elif p.ndim == 2:
                p.normal_(0.0, 2.0 * p.shape[1] ** -0.5)
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.5)
        decoder.token_embed.weight[EOS] *= 1.5  # so that some captions stop early and others run to max_length
    # float64: cached and uncached paths differ only by rounding, far below any argmax margin
    return decoder.double().eval()


def _images(batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N_TOKENS, IMAGE_WIDTH, generator=g, dtype=torch.float64)


def _sum_logprob(decoder: CaptionDecoder, image_tokens: torch.Tensor, tokens: list[int], max_length: int) -> float:
    """Summed log-prob of a generated caption (EOS included when the caption stopped early)."""
    target = [BOS, *tokens] + ([EOS] if len(tokens) < max_length else [])
    ids = torch.tensor([target])
    with torch.no_grad():
        logp = decoder(ids[:, :-1], image_tokens[None]).log_softmax(-1)
    return logp[0].gather(1, ids[0, 1:, None]).sum().item()


def test_step_logits_match_forward():
    decoder, images = _decoder(), _images(3)
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = decoder(ids, images)
        memory, cache = decoder.encode_image(images), None
        stepped = []
        for t in range(ids.shape[1]):
            logits, cache = decoder.step(ids[:, t], memory, cache)
            stepped.append(logits)
        # a multi-token chunk after a cached prefix uses the shifted causal mask
        _, prefix = decoder.step(ids[:, :3], memory, None)
        chunk, _ = decoder._decode(ids[:, 3:], memory, prefix)
    assert isinstance(cache, KVCache) and cache.length == ids.shape[1]
    torch.testing.assert_close(torch.stack(stepped, 1), full, rtol=0, atol=1e-12)
    torch.testing.assert_close(chunk, full[:, 3:], rtol=0, atol=1e-12)


def test_step_beyond_max_length_raises():
    decoder = _decoder(max_length=4)
    with pytest.raises(ValueError, match="max_length"):
        decoder(torch.full((1, 5), BOS), _images(1))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_equals_uncached(num_beams):
    decoder, images = _decoder(), _images(5)
    cached = generate(decoder, images, max_length=12, num_beams=num_beams, use_cache=True)
    uncached = generate(decoder, images, max_length=12, num_beams=num_beams, use_cache=False)
    assert cached == uncached
    # the comparison covers both stopped and full-length captions
    assert any(len(c) < 12 for c in cached) and any(len(c) == 12 for c in cached)


def test_cached_equals_uncached_sampling():
    decoder, images = _decoder(), _images(5)
    runs = [
        generate(decoder, images, max_length=12, do_sample=True, use_cache=use_cache,
                 generator=torch.Generator().manual_seed(7))
        for use_cache in (True, False)
    ]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_of_one_equals_greedy(use_cache):
    decoder, images = _decoder(), _images(5)
    with torch.no_grad():
        beam = _beam_search(decoder, images, 12, 1, 1.0, use_cache)
    assert beam == generate(decoder, images, max_length=12, use_cache=use_cache)


def test_beam_search_returns_each_images_best_hypotheses_first():
    decoder, images = _decoder(), _images(4)
    best = generate(decoder, images, max_length=12, num_beams=4)
    several = generate(decoder, images, max_length=12, num_beams=4, num_return_sequences=3)
    assert len(several) == 12
    groups = [several[3 * i : 3 * i + 3] for i in range(4)]
    assert [g[0] for g in groups] == best
    # ranked by mean log-prob per generated token (EOS counted), best first
    for image, group in zip(images, groups):
        means = [_sum_logprob(decoder, image, c, 12) / (len(c) + (len(c) < 12)) for c in group]
        assert means == sorted(means, reverse=True) and len({tuple(c) for c in group}) == 3
    with pytest.raises(ValueError, match="num_return_sequences"):
        generate(decoder, images, num_beams=2, num_return_sequences=3)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_equals_one_by_one(num_beams):
    decoder, images = _decoder(), _images(4)
    batched = generate(decoder, images, max_length=12, num_beams=num_beams)
    alone = [generate(decoder, images[i : i + 1], max_length=12, num_beams=num_beams)[0] for i in range(4)]
    assert batched == alone


def test_sampling_reproducible_and_tiny_top_p_is_greedy():
    decoder, images = _decoder(), _images(4)

    def sample(seed: int, **kw) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return generate(decoder, images, max_length=10, do_sample=True, generator=generator, **kw)

    assert sample(3, top_p=0.95) == sample(3, top_p=0.95)
    assert sample(3, top_p=1.0, temperature=2.0) != generate(decoder, images, max_length=10)
    assert sample(5, top_p=1e-6, temperature=2.0) == generate(decoder, images, max_length=10)


def _constant_decoder(token: int) -> CaptionDecoder:
    """A decoder whose every step strongly prefers `token` (final norm outputs a constant)."""
    decoder = _decoder()
    with torch.no_grad():
        direction = torch.zeros(decoder.width, dtype=torch.float64)
        direction[0] = 1.0
        decoder.token_embed.weight[token] = 10.0 * direction
        decoder.norm.weight.zero_()
        decoder.norm.bias.copy_(direction)
    return decoder


@pytest.mark.parametrize("mode", [{}, {"num_beams": 3}, {"do_sample": True}])
def test_max_length_and_eos(mode):
    images = _images(3)
    repeat = _constant_decoder(7)
    assert generate(repeat, images, max_length=5, **mode) == [[7] * 5] * 3
    # capped by the decoder's position table (max_length=16)
    assert generate(repeat, images, max_length=100, **mode) == [[7] * 16] * 3
    assert generate(_constant_decoder(EOS), images, max_length=5, **mode) == [[]] * 3


def test_generate_restores_training_mode():
    decoder = _decoder().train()
    generate(decoder, _images(2), max_length=3)
    assert decoder.training


def test_beam_search_scores_at_least_greedy():
    decoder, images = _decoder(), _images(6)
    greedy = generate(decoder, images, max_length=8)
    # length_penalty=0 ranks by the summed log-prob, the quantity compared here
    beam = generate(decoder, images, max_length=8, num_beams=4, length_penalty=0.0)
    assert beam != greedy  # the search is not trivially greedy on these weights
    for i in range(len(images)):
        assert _sum_logprob(decoder, images[i], beam[i], 8) >= _sum_logprob(decoder, images[i], greedy[i], 8) - 1e-9


def _pad(captions: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([[BOS, *c, EOS] + [PAD] * (length - len(c) - 2) for c in captions])


def test_loss_ignores_padding():
    decoder, images = _decoder(), _images(2)
    captions = [[5, 6, 7], [8, 9]]
    short, long = _pad(captions, 6), _pad(captions, 10)
    with torch.no_grad():
        loss = decoder.loss(images, short)
        assert torch.allclose(loss, decoder.loss(images, long), rtol=0, atol=1e-12)
        # token mean over the non-pad targets, each caption scored on its own
        total = sum(
            decoder.loss(images[i : i + 1], _pad([c], len(c) + 2)) * (len(c) + 1) for i, c in enumerate(captions)
        )
    assert torch.allclose(loss, total / 7, rtol=0, atol=1e-12)


def test_learns_to_caption():
    torch.manual_seed(0)
    decoder = CaptionDecoder(
        VOCAB, IMAGE_WIDTH, width=32, layers=2, heads=4, max_length=8, pad_id=PAD, bos_id=BOS, eos_id=EOS
    )
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
    assert generate(decoder, images, max_length=8) == captions
    assert generate(decoder, images, max_length=8, num_beams=3) == captions
