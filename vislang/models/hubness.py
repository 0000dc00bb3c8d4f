"""Hubness correction: a gallery item close to many queries is pushed down by how close it is.

In a small embedding space a few gallery items ("hubs") sit near many queries and crowd every
ranking's top, whatever the query. Querybank normalisation (Bogolin et al., CVPR 2022; CSLS of
Conneau et al. 2018 is the same idea) measures each gallery item's pull on a bank of typical
queries and subtracts it: score(q, g) = cos(q, g) - weight * mean of g's top-k cosines with the
bank. The bank here is the training split itself, embedded at the end of training: the captions
are the queries an image gallery is searched with, the images those a caption gallery is searched
with. The penalty depends on the gallery item alone, so it is computed once per item and never
needs the other test queries.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

# Kinds of gallery item ranked by the plain cosine: on val the penalty lowered room title R@5 with
# every weight tried (docs/RESULTS.md, eleventh session). `vislang eval` and the search index both
# read this, so the two rank alike.
PLAIN_COSINE_KINDS = frozenset({"room"})


def check_modality(modality: str) -> None:
    """A gallery's modality: "image" (searched with texts) or "text" (searched with images)."""
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be image or text, not {modality!r}")


class QueryBank(nn.Module):
    def __init__(self, size: int, embed_dim: int, k: int, weight: float) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"model.hubness.k must be >= 1, got {k}")
        self.k, self.weight = k, weight
        self.register_buffer("texts", torch.zeros(size, embed_dim))
        self.register_buffer("images", torch.zeros(size, embed_dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fill(self, texts: Tensor, images: Tensor) -> None:
        """The training captions' and training images' embeddings [size, D] (L2-normalised)."""
        self.texts.copy_(texts)
        self.images.copy_(images)
        self.filled.fill_(True)

    @torch.no_grad()
    def penalty(self, gallery: Tensor, modality: str) -> Tensor:
        """[N]: what to subtract from every query's score for each gallery row [N, D] of `modality`
        ("image": searched with texts; "text": searched with images). Zero until the bank is filled."""
        check_modality(modality)
        if not bool(self.filled):
            return gallery.new_zeros(gallery.shape[0])
        bank = self.texts if modality == "image" else self.images
        similarity = gallery.to(bank.dtype) @ bank.t()
        return self.weight * similarity.topk(min(self.k, bank.shape[0]), dim=1).values.mean(dim=1)
