"""What the index stores per vector (a record) and what a search returns (a Hit)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..data.catalog import Item

Record = dict[str, Any]  # id, kind, image, title, type, color, links, caption, split: plain JSON, one line per vector


def item_type(item: Item) -> str | None:
    """What a result shows as the item's type: a product's type, a room's category (which the index's
    re-ranker reads a room's kind from too)."""
    return item.meta.get("type") or item.meta.get("category") or None


def record_of(item: Item) -> Record:
    """The fields a result shows, from a catalog item. Products: title is the catalog caption
    ("GRUNDTAL Wall shelf, Stainless steel"); rooms: the room title, and their category as type."""
    meta = item.meta
    return {
        "id": item.id,
        "kind": item.kind,
        "image": str(Path(item.image).resolve()),  # absolute, so results are usable from any folder
        "title": meta.get("title") or item.caption,
        "type": item_type(item),
        "color": meta.get("color") or None,
        "links": list(item.links),
        "caption": item.caption,  # the training items' captions are what the re-ranker reads
        "split": item.split,
    }


@dataclass(frozen=True)
class Hit:
    id: str
    kind: str
    score: float  # inner product of unit vectors (cosine; plus the re-ranker's terms when asked), or a goes-with score
    title: str
    type: str | None
    color: str | None
    image: str
    rerank_score: float | None = None  # P(match) from the matching head, when re-ranked
    rooms: tuple[str, ...] = ()  # goes-with: rooms the product appears in

    @classmethod
    def from_record(cls, record: Record, score: float, **extra: Any) -> Hit:
        fields = {name: record.get(name) for name in ("id", "kind", "title", "type", "color", "image")}
        return cls(score=float(score), **fields, **extra)

    def with_rerank(self, value: float) -> Hit:
        return replace(self, rerank_score=float(value))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["rooms"] = list(self.rooms)
        if not self.rooms:
            del out["rooms"]
        return out


HitJson = Callable[["Hit"], dict[str, Any]]


def search_json(hits: Sequence[Hit], query: str | None, image: str | None, kind: str | None, k: int,
                rerank: int | None, reranker: bool, hit_json: HitJson = Hit.to_json) -> dict[str, Any]:
    """What `vislang search --json` prints and the service's search endpoints return: the query
    and its hits, each as `hit_json` writes it (the service names images by URL, not by path)."""
    return {"query": query, "image": image, "kind": kind, "k": k, "rerank": rerank, "reranker": reranker,
            "results": [hit_json(hit) for hit in hits]}
