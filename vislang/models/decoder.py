"""Caption decoder, BLIP-style: a BERT made causal, with cross-attention to the image tokens.

BLIP initialises its decoder from BERT; here it starts from a pretrained BERT-like text model
(by default the bundled MiniLM-L6, the text tower's own weights): Hugging Face's
`BertLMHeadModel` with `is_decoder=True, add_cross_attention=True`, keeping the source's first
`layers` layers and its word embeddings. The cross-attention layers and the output transform are
new. The output layer is tied to the word embeddings, restricted to the caption vocabulary
(`vocab.py`: a 30k-way softmax is the costliest part of a small decoder on a CPU, and a furniture
catalog uses a few thousand of those tokens).

Decoding is Hugging Face's `generate` (greedy, beam search, nucleus sampling, its key/value
cache); the image tokens are projected once per call and passed as `encoder_hidden_states`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Weights of the source model that the decoder does not have (a BERT pooler is for classification).
_NOT_USED = ("pooler.",)
# What a pretrained start leaves new: BLIP's decoder learns these from scratch too.
_NEW = ("crossattention.", "cls.predictions.")


class CaptionDecoder(nn.Module):
    """Image tokens [B, N, image_width] -> caption logits, over the decoder's own vocabulary."""

    def __init__(self, source: str, image_width: int, token_ids: list[int], special_ids: dict[str, int],
                 layers: int = 2, max_length: int = 40, pretrained: bool = True, dropout: float = 0.1) -> None:
        """`source`: a folder with a BERT-like config.json (and weights, when `pretrained`);
        `token_ids`: the source vocabulary's ids the decoder predicts, in its order; `special_ids`:
        pad_id, bos_id, eos_id in the decoder's own ids; `dropout`: hidden and attention dropout in training."""
        super().__init__()
        from transformers import BertConfig, BertLMHeadModel

        config = BertConfig.from_pretrained(
            source, is_decoder=True, add_cross_attention=True, num_hidden_layers=layers, vocab_size=len(token_ids),
            pad_token_id=special_ids["pad_id"], bos_token_id=special_ids["bos_id"], eos_token_id=special_ids["eos_id"],
            tie_word_embeddings=True, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        if max_length > config.max_position_embeddings:
            raise ValueError(f"max_length {max_length} is beyond the source's {config.max_position_embeddings} positions")
        self.lm = BertLMHeadModel(config)
        self.max_length = max_length
        self.pad_id, self.bos_id, self.eos_id = special_ids["pad_id"], special_ids["bos_id"], special_ids["eos_id"]
        self.image_proj = nn.Linear(image_width, config.hidden_size)
        # tower outputs come at very different scales (convnet maps vs ViT tokens); normalising
        # the projected tokens keeps cross-attention well conditioned for either
        self.image_norm = nn.LayerNorm(config.hidden_size)
        if pretrained:
            self._start_from(source, token_ids, layers)

    def _start_from(self, source: str, token_ids: list[int], layers: int) -> None:
        """The source's first `layers` layers and its word embeddings (the rows of `token_ids`)."""
        from transformers import AutoModel

        weights = AutoModel.from_pretrained(source).state_dict()
        kept = {}
        for name, tensor in weights.items():
            if name.startswith(_NOT_USED):
                continue
            if name.startswith("encoder.layer.") and int(name.split(".")[2]) >= layers:
                continue
            if name == "embeddings.word_embeddings.weight":
                tensor = tensor[torch.tensor(token_ids)]
            kept["bert." + name] = tensor
        missing, unexpected = self.lm.load_state_dict(kept, strict=False)
        # position_ids is a buffer some transformers versions keep and others do not
        stray = [k for k in unexpected if not k.endswith("position_ids")]
        untrained = [k for k in missing if not any(part in k for part in _NEW) and not k.endswith("position_ids")]
        if stray or untrained:
            raise ValueError(f"{source} is not a BERT-like model the decoder can start from "
                             f"(left out: {untrained[:3]}, not used: {stray[:3]})")

    def save_architecture(self, folder: Path) -> None:
        """The BERT config, so that a checkpoint rebuilds the decoder without its source."""
        self.lm.config.save_pretrained(folder)

    def memory(self, image_tokens: Tensor) -> Tensor:
        """Image tokens projected to the decoder's width: what its cross-attention reads."""
        return self.image_norm(self.image_proj(image_tokens.to(self.image_proj.weight.dtype)))

    def forward(self, input_ids: Tensor, image_tokens: Tensor) -> Tensor:
        """Teacher-forced logits [B, T, V] for input_ids [B, T] (position t sees ids[:, :t+1])."""
        if input_ids.shape[1] > self.max_length:
            raise ValueError(f"{input_ids.shape[1]} positions are beyond the decoder's max_length {self.max_length}")
        out = self.lm(input_ids=input_ids, attention_mask=(input_ids != self.pad_id).long(),
                      encoder_hidden_states=self.memory(image_tokens), use_cache=False)
        return out.logits

    def loss(self, image_tokens: Tensor, target_ids: Tensor) -> Tensor:
        """Next-token cross-entropy, averaged over the non-pad target tokens of the batch.

        target_ids [B, T] are whole captions: BOS, tokens, EOS, then pad_id.
        """
        logits = self(target_ids[:, :-1], image_tokens)
        # softmax over thousands of classes is too coarse in half precision
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        targets = target_ids[:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=self.pad_id)

    @torch.inference_mode()
    def generate(self, image_tokens: Tensor, *, max_length: int = 32, num_beams: int = 1, do_sample: bool = False,
                 top_p: float = 0.9, temperature: float = 1.0, length_penalty: float = 1.0,
                 num_return_sequences: int = 1, use_cache: bool = True, seed: int | None = None) -> list[list[int]]:
        """Captions for image tokens [B, N, C]: per image, the generated ids without BOS, cut before EOS.

        Modes, as Hugging Face's `generate` has them: greedy (num_beams=1), beam search
        (num_beams > 1, `num_return_sequences` best hypotheses per image, best first, image after
        image), nucleus sampling (do_sample=True with top_p and temperature; `seed` makes it
        repeatable). At most max_length tokens are generated (EOS included), capped by the
        decoder's max_length. The decoder runs in eval mode; its training flag is restored.
        """
        from transformers import DynamicCache, EncoderDecoderCache, GenerationConfig

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
        max_length = min(max_length, self.max_length - 1)  # the BOS takes a position
        batch = image_tokens.shape[0]
        if max_length < 1 or batch == 0:
            return [[] for _ in range(batch * num_return_sequences)]
        settings = GenerationConfig(
            max_new_tokens=max_length, num_beams=num_beams, num_return_sequences=num_return_sequences,
            do_sample=do_sample, top_p=top_p if do_sample else None, top_k=0 if do_sample else None,
            temperature=temperature if do_sample else None, length_penalty=length_penalty, use_cache=use_cache,
            bos_token_id=self.bos_id, eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        start = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=image_tokens.device)
        # A decoder-only model with cross-attention needs a cache with room for both attentions,
        # which `generate` does not make by itself for BertLMHeadModel.
        cache = {"cache": EncoderDecoderCache(DynamicCache(), DynamicCache())} if use_cache else {}
        was_training = self.training
        self.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.lm.generate(input_ids=start, attention_mask=torch.ones_like(start),
                                       encoder_hidden_states=self.memory(image_tokens), generation_config=settings,
                                       **cache)
        finally:
            self.train(was_training)
        # rows that finished early are padded after their EOS: cutting at the EOS drops the padding
        return [row[: row.index(self.eos_id)] if self.eos_id in row else row for row in out[:, 1:].tolist()]
