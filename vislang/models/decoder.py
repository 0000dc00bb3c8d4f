"""Caption decoder: a causal transformer that writes text conditioned on image tokens.

CoCa/BLIP-style captioner. Each block is pre-norm causal self-attention, pre-norm
cross-attention to the (projected) image tokens, and an MLP; the output head is tied to
the token embedding. Besides teacher-forced `forward`/`loss`, the decoder supports
incremental decoding: `encode_image` projects the image tokens and precomputes every
layer's cross-attention keys/values once (`DecoderMemory`), and `step` feeds one new
token per sequence, keeping each layer's self-attention keys/values in a `KVCache` so a
step costs one position instead of the whole prefix. `reorder` selects rows of either
state, which is what beam search needs. Decoding loops live in `generate.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DecoderMemory:
    """Per-layer cross-attention keys and values of the image tokens, each [B, heads, N, head_dim]."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]

    def index_select(self, index: Tensor) -> DecoderMemory:
        return DecoderMemory(
            tuple(k.index_select(0, index) for k in self.keys),
            tuple(v.index_select(0, index) for v in self.values),
        )


@dataclass(frozen=True)
class KVCache:
    """Per-layer self-attention keys and values of the positions decoded so far, each [B, heads, T, head_dim]."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def index_select(self, index: Tensor) -> KVCache:
        return KVCache(
            tuple(k.index_select(0, index) for k in self.keys),
            tuple(v.index_select(0, index) for v in self.values),
        )


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, w = x.shape
    return x.view(b, t, heads, w // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class _SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = (_split_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        t, p = q.shape[2], k.shape[2] - q.shape[2]
        dropout = self.dropout if self.training else 0.0
        if p == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=t > 1)
        elif t == 1:
            # one new query may see every cached position: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            # several new queries after a cached prefix: causal mask shifted by the prefix length
            rows = torch.arange(t, device=q.device)[:, None] + p
            mask = rows >= torch.arange(p + t, device=q.device)[None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out(_merge_heads(y)), (k, v)


class _CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(memory).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = _split_heads(self.q(x), self.heads)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(_merge_heads(y))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = _SelfAttention(width, heads, dropout)
        self.norm_cross = nn.LayerNorm(width)
        self.cross_attn = _CrossAttention(width, heads, dropout)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, cross_k: Tensor, cross_v: Tensor, past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        y, kv = self.self_attn(self.norm_self(x), past)
        x = x + self.drop(y)
        x = x + self.drop(self.cross_attn(self.norm_cross(x), cross_k, cross_v))
        x = x + self.drop(self.mlp(self.norm_mlp(x)))
        return x, kv


class CaptionDecoder(nn.Module):
    """Causal transformer decoder with cross-attention to image tokens [B, N, image_width]."""

    def __init__(
        self,
        vocab_size: int,
        image_width: int,
        width: int = 256,
        layers: int = 2,
        heads: int = 4,
        max_length: int = 40,
        pad_id: int = 0,
        bos_id: int = 101,
        eos_id: int = 102,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        for name, value in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if not 0 <= value < vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary of size {vocab_size}")
        self.vocab_size = vocab_size
        self.width = width
        self.max_length = max_length
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.empty(max_length, width))
        self.image_proj = nn.Linear(image_width, width)
        # tower outputs come at very different scales (convnet maps vs ViT tokens); normalising
        # the projected tokens keeps cross-attention well conditioned for either
        self.image_norm = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(_Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def encode_image(self, image_tokens: Tensor) -> DecoderMemory:
        """Project image tokens [B, N, C] once and precompute every layer's cross-attention keys/values."""
        memory = self.image_norm(self.image_proj(image_tokens.to(self.image_proj.weight.dtype)))
        kvs = [block.cross_attn.keys_values(memory) for block in self.blocks]
        return DecoderMemory(tuple(k for k, _ in kvs), tuple(v for _, v in kvs))

    def _decode(
        self, input_ids: Tensor, memory: DecoderMemory, cache: KVCache | None
    ) -> tuple[Tensor, KVCache]:
        start = cache.length if cache is not None else 0
        end = start + input_ids.shape[1]
        if end > self.max_length:
            raise ValueError(f"position {end - 1} is beyond the decoder's max_length {self.max_length}")
        x = self.drop(self.token_embed(input_ids) + self.pos_embed[start:end])
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past = (cache.keys[i], cache.values[i]) if cache is not None else None
            x, (k, v) = block(x, memory.keys[i], memory.values[i], past)
            keys.append(k)
            values.append(v)
        logits = F.linear(self.norm(x), self.token_embed.weight)
        return logits, KVCache(tuple(keys), tuple(values))

    def forward(self, input_ids: Tensor, image_tokens: Tensor) -> Tensor:
        """Teacher-forced logits [B, T, V] for input_ids [B, T] (position t sees ids[:, :t+1])."""
        logits, _ = self._decode(input_ids, self.encode_image(image_tokens), None)
        return logits

    def loss(self, image_tokens: Tensor, target_ids: Tensor) -> Tensor:
        """Next-token cross-entropy, averaged over the non-pad target tokens of the batch.

        target_ids [B, T] are whole captions: BOS, tokens, EOS, then pad_id.
        """
        logits = self(target_ids[:, :-1], image_tokens)
        # softmax over ~30k classes is too coarse in half precision
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        targets = target_ids[:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=self.pad_id)

    def step(
        self, last_ids: Tensor, memory: DecoderMemory, cache: KVCache | None = None
    ) -> tuple[Tensor, KVCache]:
        """Feed the newest token of each sequence ([B, 1] or [B]); return next-token logits [B, V] and the grown cache.

        Start with cache=None and last_ids = BOS. Feeding [B, T] ids at once also works
        (e.g. a prompt); the logits are those of the last position.
        """
        if last_ids.ndim == 1:
            last_ids = last_ids[:, None]
        logits, cache = self._decode(last_ids, memory, cache)
        return logits[:, -1], cache

    @staticmethod
    def reorder(state: KVCache | DecoderMemory, index: Tensor) -> KVCache | DecoderMemory:
        """Rows `index` of a cache or memory (beam search: follow the surviving hypotheses; repeat images per beam)."""
        return state.index_select(index)
