"""Retrieval for the caption decoder: the captions of the training images nearest the query image.

A catalog caption is mostly a product name ("BILLY bookcase, white") that no image shows but a
training product of the same family carries. Nearest-neighbour retrieval copies the caption of
the single closest training image; the decoder instead reads the captions of the `k` closest
(SmallCap-style retrieval augmentation) beside the image tokens, so it can copy the name, agree
on the type with most neighbours and take the colour from the image.

The store keeps every training item's caption (decoder ids) and image embedding as buffers, so
checkpoints carry it. During training the embeddings are those of the item's latest batch (the
item itself is never its own neighbour); at the end of training they are refreshed in eval mode.
Each retrieved token becomes a memory token: its embedding, the embedding of the token before
it (so attending to "the token after the one just written" is a key match), its position and
the neighbour's rank.

The matching head reads the store too (`overlap`): how much of a query text the captions of an
image's nearest training images contain. The name in "BILLY Bookcase, White" is in no photo, but
the image's neighbours carry it when they are of the same family.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class CaptionNeighbours(nn.Module):
    def __init__(self, size: int, length: int, k: int, vocab_size: int, width: int, embed_dim: int, pad_id: int) -> None:
        super().__init__()
        self.k, self.pad_id = k, pad_id
        self.register_buffer("ids", torch.full((size, length), pad_id, dtype=torch.long))
        self.register_buffer("embeddings", torch.zeros(size, embed_dim))
        self.register_buffer("filled", torch.zeros(size, dtype=torch.bool))
        self.token = nn.Embedding(vocab_size, width)
        self.previous = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        self.rank = nn.Parameter(torch.randn(k, width) * 0.02)
        self.norm = nn.LayerNorm(width)

    def set_captions(self, ids: Tensor) -> None:
        """Decoder ids of every training caption [size, <= length], in the order of the training items."""
        self.ids.fill_(self.pad_id)
        length = min(ids.shape[1], self.ids.shape[1])
        self.ids[:, :length] = ids[:, :length]

    @torch.no_grad()
    def remember(self, indices: Tensor, embeddings: Tensor) -> None:
        """Store the (detached) image embeddings of training items `indices`."""
        self.embeddings[indices] = embeddings.detach().to(self.embeddings.dtype)
        self.filled[indices] = True

    @torch.no_grad()
    def nearest(self, embeddings: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Indices [B, k] of the stored items most similar to each embedding [B, D], best first."""
        scores = embeddings.to(self.embeddings.dtype) @ self.embeddings.t()
        scores = scores.masked_fill(~self.filled, float("-inf"))
        if exclude is not None:
            scores[torch.arange(len(exclude), device=scores.device), exclude] = float("-inf")
        return scores.topk(min(self.k, scores.shape[1]), dim=1).indices

    def forward(self, embeddings: Tensor, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Memory tokens [B, k * length, width] of the k nearest captions of each embedding, and
        their decoder ids [B, k * length] (what a copying decoder copies)."""
        ids = self.ids[self.nearest(embeddings, exclude)]  # [B, k, T]
        before = torch.cat([torch.full_like(ids[..., :1], self.pad_id), ids[..., :-1]], dim=-1)
        tokens = self.token(ids) + self.previous(before) + self.position + self.rank[: ids.shape[1], None]
        return self.norm(tokens).flatten(1, 2), ids.flatten(1, 2)

    @torch.no_grad()
    def overlap(self, embeddings: Tensor, query_ids: Tensor, ignore: Tensor) -> Tensor:
        """[B_images, B_texts, k]: entry r is the share of a query's tokens found in the captions of
        the image's r + 1 nearest neighbours.

        query_ids [B_texts, L] are decoder ids; ids in `ignore` (pad, BOS, EOS) are not counted.
        """
        ids = self.ids[self.nearest(embeddings)]  # [B_i, k, T]
        vocab = self.token.num_embeddings
        present = torch.zeros(*ids.shape[:2], vocab, device=ids.device).scatter_(2, ids, 1.0)
        present = present.cummax(dim=1).values  # found in any of the first r + 1 neighbours
        counted = ~torch.isin(query_ids, ignore)  # [B_t, L]
        hits = present[:, :, query_ids] * counted  # [B_i, k, B_t, L]
        share = hits.sum(-1) / counted.sum(-1).clamp(min=1)
        return share.transpose(1, 2)
