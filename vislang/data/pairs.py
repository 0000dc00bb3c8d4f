"""Training batches of (image, text) pairs with a mask of which texts each image matches.

A batch holds a few rooms, some of the training products each room shows (so that room<->product
positives meet in one batch), then random products. Each item brings one of its texts: the
catalog caption with probability `caption_prob`, otherwise one of its other texts.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .catalog import Item, ManifestError


@dataclass(frozen=True)
class Batch:
    items: list[int]  # indices into the sampler's item list
    texts: list[str]
    positives: torch.Tensor  # [B, B] bool: image i matches text j
    links: torch.Tensor  # [B, B] bool: image i is a room and image j a product it shows, or the reverse


class PairSampler:
    def __init__(self, items: list[Item], data_cfg: dict[str, Any], batch_size: int, seed: int) -> None:
        if len(items) < 2:
            raise ManifestError(f"training needs at least two images; the training split has {len(items)}")
        self.items, self.cfg, self.seed = items, data_cfg, seed
        self.batch_size = min(batch_size, len(items))
        self._index = {item.id: i for i, item in enumerate(items)}
        self._rooms = [i for i, item in enumerate(items) if item.links]
        self._others = [i for i, item in enumerate(items) if not item.links]
        # Links are kept only to items in this list, so other splits never leak in.
        self._links = {i: [self._index[p] for p in item.links if p in self._index] for i, item in enumerate(items)}
        self._linked_pairs = {(i, j) for i, linked in self._links.items() for j in linked}
        self._linked_pairs |= {(j, i) for i, j in self._linked_pairs}
        self._text_sets = [set(item.texts) for item in items]

    def __len__(self) -> int:
        """Batches per epoch: every item is seen about once."""
        return max(1, len(self.items) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        others, rooms = self._others[:], self._rooms[:]
        rng.shuffle(others)
        rng.shuffle(rooms)
        room_quota = self.cfg["rooms_per_batch"] if self.cfg["room_links"] else 0
        if not room_quota:  # rooms drawn by no quota are drawn like any other image
            others += rooms
            rng.shuffle(others)
        for number in range(len(self)):
            chosen: dict[int, None] = {}
            for k in range(min(room_quota, len(rooms))):
                room = rooms[(number * room_quota + k) % len(rooms)]
                chosen[room] = None
                linked = self._links[room][:]
                rng.shuffle(linked)
                for j in linked[: self.cfg["linked_per_room"]]:
                    chosen[j] = None
            stream = others if others else rooms
            offset = number * self.batch_size
            # One pass over the stream from this batch's offset, then the rooms: a batch larger than
            # the non-room images (batch_size is at most the item count) still fills, and ends.
            for index in itertools.chain((stream[(offset + k) % len(stream)] for k in range(len(stream))), rooms):
                if len(chosen) >= self.batch_size:
                    break
                chosen[index] = None
            indices = list(chosen)[: self.batch_size]
            texts = [self._pick_text(i, rng) for i in indices]
            links = self.links(indices)
            yield Batch(indices, texts, self.positives(indices, texts, links), links)

    def _pick_text(self, index: int, rng: random.Random) -> str:
        texts = self.items[index].texts
        if len(texts) == 1 or rng.random() < self.cfg["caption_prob"]:
            return texts[0]
        return rng.choice(texts[1:])

    def links(self, indices: list[int]) -> torch.Tensor:
        if not self.cfg["room_links"]:
            return torch.zeros(len(indices), len(indices), dtype=torch.bool)
        return torch.tensor([[(i, j) in self._linked_pairs for j in indices] for i in indices], dtype=torch.bool)

    def positives(self, indices: list[int], texts: list[str], links: torch.Tensor) -> torch.Tensor:
        """Image i matches text j when text j is one of item i's own texts, or image i is a room
        and text j comes from a product it shows. Not the reverse: a product photo made to match
        its rooms' titles drifts from the photos of products like it (val, pretrained towers:
        product text->image R@10 0.81 one way, 0.78 both ways, docs/RESULTS.md)."""
        own = torch.tensor([[a == b or text in self._text_sets[i] for b, text in enumerate(texts)] for a, i in enumerate(indices)])
        shows = torch.tensor([bool(self.items[i].links) for i in indices])
        return own | (links & shows[:, None])
