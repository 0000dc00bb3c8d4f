"""Caption generation with a `CaptionDecoder`: greedy, beam search and nucleus sampling.

`generate` is the entry point. Every mode runs batched over the images, with the
key/value cache (`use_cache=True`) or by re-running `forward` on the whole prefix each
step (`use_cache=False`, the slow reference the cached path must agree with).

Beam search ranks hypotheses, both while searching and for the final pick, by
``sum(log p) / L ** length_penalty`` where L counts the generated tokens including EOS
(BOS excluded). The default length_penalty=1.0 is the mean log-prob per token;
0.0 is the plain summed log-prob, which favours short captions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .decoder import CaptionDecoder, DecoderMemory, KVCache


class _Stepper:
    """Next-token logits for a growing batch of prefixes, with or without the cache."""

    def __init__(self, decoder: CaptionDecoder, image_tokens: Tensor, use_cache: bool) -> None:
        self.decoder = decoder
        self.use_cache = use_cache
        self.image_tokens = image_tokens
        self.memory: DecoderMemory | None = decoder.encode_image(image_tokens) if use_cache else None
        self.cache: KVCache | None = None

    def expand(self, index: Tensor) -> None:
        """Repeat image rows (one per beam) before the first step."""
        if self.use_cache:
            self.memory = self.decoder.reorder(self.memory, index)
        else:
            self.image_tokens = self.image_tokens.index_select(0, index)

    def logits(self, ids: Tensor) -> Tensor:
        if not self.use_cache:
            return self.decoder(ids, self.image_tokens)[:, -1]
        logits, self.cache = self.decoder.step(ids[:, -1:], self.memory, self.cache)
        return logits

    def reorder(self, index: Tensor) -> None:
        if self.use_cache and self.cache is not None:
            self.cache = self.decoder.reorder(self.cache, index)


def _log_probs(logits: Tensor) -> Tensor:
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _nucleus_sample(logits: Tensor, top_p: float, temperature: float, generator: torch.Generator | None) -> Tensor:
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


def _strip(rows: Tensor, eos_id: int) -> list[list[int]]:
    out = []
    for row in rows.tolist():
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out


def _greedy_or_sample(
    decoder: CaptionDecoder,
    image_tokens: Tensor,
    max_length: int,
    do_sample: bool,
    top_p: float,
    temperature: float,
    use_cache: bool,
    generator: torch.Generator | None,
) -> list[list[int]]:
    b = image_tokens.shape[0]
    stepper = _Stepper(decoder, image_tokens, use_cache)
    ids = torch.full((b, 1), decoder.bos_id, dtype=torch.long, device=image_tokens.device)
    finished = torch.zeros(b, dtype=torch.bool, device=image_tokens.device)
    for _ in range(max_length):
        logits = stepper.logits(ids)
        if do_sample:
            nxt = _nucleus_sample(logits, top_p, temperature, generator)
        else:
            nxt = logits.argmax(dim=-1)
        nxt = nxt.masked_fill(finished, decoder.pad_id)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        finished |= nxt == decoder.eos_id
        if finished.all():
            break
    return _strip(ids[:, 1:], decoder.eos_id)


def _beam_search(
    decoder: CaptionDecoder,
    image_tokens: Tensor,
    max_length: int,
    num_beams: int,
    length_penalty: float,
    use_cache: bool,
    returned: int = 1,
) -> list[list[int]]:
    b, k, device = image_tokens.shape[0], num_beams, image_tokens.device
    if k > decoder.vocab_size:
        raise ValueError(f"num_beams {k} exceeds the vocabulary size {decoder.vocab_size}")
    stepper = _Stepper(decoder, image_tokens, use_cache)
    stepper.expand(torch.arange(b, device=device).repeat_interleave(k))
    ids = torch.full((b * k, 1), decoder.bos_id, dtype=torch.long, device=device)
    # all beams start as the same BOS prefix: only beam 0 may expand at first, or the
    # first step would select the same token k times
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    lengths = torch.zeros(b * k, dtype=torch.long, device=device)
    finished = torch.zeros(b * k, dtype=torch.bool, device=device)
    rows_base = (torch.arange(b, device=device) * k)[:, None]
    for _ in range(max_length):
        logp = _log_probs(stepper.logits(ids))
        scores = scores.to(logp.dtype)
        # a finished hypothesis has exactly one continuation, pad, at no cost: it keeps its
        # score and competes for a beam slot without growing
        done_row = torch.full_like(logp[0], float("-inf"))
        done_row[decoder.pad_id] = 0.0
        logp = torch.where(finished[:, None], done_row, logp)
        candidates = scores.reshape(-1, 1) + logp  # [b*k, V]
        new_lengths = lengths + (~finished).long()
        ranked = candidates / new_lengths.clamp(min=1)[:, None].to(logp.dtype) ** length_penalty
        vocab = logp.shape[-1]
        _, top = ranked.view(b, k * vocab).topk(k, dim=1)
        rows = (rows_base + top // vocab).view(-1)
        tokens = (top % vocab).view(-1)
        scores = candidates.view(b, k * vocab).gather(1, top)
        ids = torch.cat([ids[rows], tokens[:, None]], dim=1)
        lengths = new_lengths[rows]
        finished = finished[rows] | (tokens == decoder.eos_id)
        stepper.reorder(rows)
        if finished.all():
            break
    final = scores / lengths.view(b, k).clamp(min=1).to(scores.dtype) ** length_penalty
    ranked = rows_base + final.argsort(dim=1, descending=True, stable=True)[:, :returned]
    return _strip(ids[ranked.reshape(-1), 1:], decoder.eos_id)


@torch.inference_mode()
def generate(
    decoder: CaptionDecoder,
    image_tokens: Tensor,
    *,
    max_length: int = 32,
    num_beams: int = 1,
    do_sample: bool = False,
    top_p: float = 0.9,
    temperature: float = 1.0,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    length_penalty: float = 1.0,
    num_return_sequences: int = 1,
) -> list[list[int]]:
    """Captions for image tokens [B, N, C]: per image, the generated ids without BOS, cut before EOS.

    Beam search can return each image's `num_return_sequences` best hypotheses, best first, image
    after image (B * n rows).

    Modes: greedy (num_beams=1, do_sample=False); beam search (num_beams > 1, ranking by
    sum log-prob / length ** length_penalty, see the module docstring); nucleus sampling
    (do_sample=True, with top_p, temperature and `generator` for reproducibility).
    At most max_length tokens are generated (EOS included), capped by the decoder's
    position table (decoder.max_length). The decoder runs in eval mode; its training
    flag is restored afterwards.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must be between 1 and num_beams ({num_beams}), got {num_return_sequences}")
    if do_sample and num_beams > 1:
        raise ValueError("nucleus sampling with beam search is not supported: use num_beams=1 with do_sample=True")
    if do_sample and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if do_sample and temperature <= 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    max_length = min(max_length, decoder.max_length)
    if max_length < 1 or image_tokens.shape[0] == 0:
        return [[] for _ in range(image_tokens.shape[0] * num_return_sequences)]
    was_training = decoder.training
    decoder.eval()
    try:
        if num_beams > 1:
            return _beam_search(decoder, image_tokens, max_length, num_beams, length_penalty, use_cache,
                                num_return_sequences)
        return _greedy_or_sample(
            decoder, image_tokens, max_length, do_sample, top_p, temperature, use_cache, generator
        )
    finally:
        decoder.train(was_training)
