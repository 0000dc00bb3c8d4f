"""The caption decoder's own vocabulary: the tokenizer ids its training captions use.

A 30k-token output layer is the costliest part of a small decoder on a CPU, and most of those
tokens never occur in a furniture catalog. The decoder predicts over the ids its captions use
(plus the special ids); this module maps tokenizer ids to those compact ids and back.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn


def caption_token_ids(token_rows: Iterable[Iterable[int]], special_ids: dict[str, int]) -> list[int]:
    """Sorted distinct tokenizer ids of the captions, with pad, BOS and EOS always included."""
    ids = {int(i) for row in token_rows for i in row}
    ids |= {special_ids[name] for name in ("pad_id", "bos_id", "eos_id")}
    return sorted(ids)


class CaptionVocab(nn.Module):
    """tokenizer id <-> decoder id. Ids outside the vocabulary map to the decoder's pad id."""

    def __init__(self, token_ids: list[int], tokenizer_size: int, pad_id: int) -> None:
        super().__init__()
        full = torch.tensor(token_ids, dtype=torch.long)
        if full.numel() == 0 or int(full.max()) >= tokenizer_size:
            raise ValueError("caption vocabulary ids must be non-empty and inside the tokenizer's vocabulary")
        compact = torch.full((tokenizer_size,), token_ids.index(pad_id), dtype=torch.long)
        compact[full] = torch.arange(len(token_ids))
        # persistent=False: rebuilt from the config's token_ids, so checkpoints stay the same size
        self.register_buffer("full_ids", full, persistent=False)
        self.register_buffer("compact_ids", compact, persistent=False)

    def __len__(self) -> int:
        return self.full_ids.numel()

    def special_ids(self, special: dict[str, int]) -> dict[str, int]:
        """The decoder's vocab size and special ids, in its own id space."""
        return {"vocab_size": len(self), **{k: int(self.compact_ids[v]) for k, v in special.items() if k != "vocab_size"}}

    def to_decoder(self, ids: Tensor) -> Tensor:
        return self.compact_ids[ids]

    def to_tokenizer(self, ids: list[int]) -> list[int]:
        return self.full_ids[torch.as_tensor(ids, dtype=torch.long)].tolist()
