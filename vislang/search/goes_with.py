""""What looks good with my sofa": products that share rooms with products like the query.

The catalog's rooms are photos of furnished rooms with the products they show, so a room is
evidence that its products go together. The query (a product id or a photo) is embedded; its
nearest products are found in the index; each room that shows one of them is scored by its
best such product (its anchor: the room's look-alike of the query); and every other product of
the best rooms is ranked by the summed scores of the rooms it appears in. Anchors are left out
of the answer: they are look-alikes (another sofa), not things that go with the query.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..data.images import ImageLike, ImageLoadError
from .errors import QueryError
from .hits import Hit, HitJson

if TYPE_CHECKING:
    from .index import Index

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class GoesWith:
    products: list[Hit]  # best first; each hit's `rooms` are the rooms it was found in
    rooms: list[Hit]  # the rooms used, best first, scored by their anchor's similarity to the query
    anchors: dict[str, str] = field(default_factory=dict)  # room id -> its product most like the query

    def to_json(self, query: str, hit_json: HitJson = Hit.to_json) -> dict[str, Any]:
        """What `vislang goes-with --json` prints and the service's goes-with endpoint returns."""
        return {"query": query, "products": [hit_json(hit) for hit in self.products],
                "rooms": [{**hit_json(hit), "anchor": self.anchors[hit.id]} for hit in self.rooms]}


def resolve_query(index: Index, query: str | ImageLike) -> tuple[ImageLike, set[str]]:
    """The image to embed and the product ids to leave out (the query product itself).

    A string is a product id of the index first, then a room id (its photo), then an image path.
    IKEA ids look like "000.114.28", so "has a suffix" does not mean "is a file name"; only an
    image suffix or a folder separator makes a missing path an image error rather than an unknown id.
    """
    if isinstance(query, Image.Image):
        return query, set()
    text = str(query).strip()
    if not text:
        raise QueryError("empty query: give a product id or an image")
    record = index.record("product", text)
    if record is not None:
        return record["image"], {text}
    room = index.record("room", text)
    if room is not None:  # what goes with a room: start from its photo
        return room["image"], set()
    path = Path(text)
    if path.is_file():
        same = str(path.resolve())
        return path, {r["id"] for r in index.parts["product"].records if r["image"] == same}
    if path.suffix.lower() in IMAGE_SUFFIXES or "/" in text or "\\" in text:
        raise ImageLoadError(f"image not found: {path}")
    raise QueryError(f"unknown id {text!r}: no product or room in the index has it, and no file has that name")


def goes_with(index: Index, query: str | ImageLike, k: int = 10, rooms: int = 10, neighbours: int = 50) -> GoesWith:
    missing = [kind for kind in ("product", "room") if kind not in index.parts]
    if missing:
        raise QueryError(f"goes-with needs products and rooms in the index; it has no {' or '.join(missing)}s "
                         "(build it with --kinds rooms,products)")
    if min(k, rooms, neighbours) < 1:
        raise QueryError("k, rooms and neighbours must be at least 1")
    image, leave_out = resolve_query(index, query)
    vector = index.model.encode_images([image])
    found = index.search_vectors(vector, neighbours + len(leave_out), kind="product")[0]
    near = {hit.id: hit.score for hit in found if hit.id not in leave_out}

    scored_rooms = []
    for room in index.parts["room"].records:
        shown = [p for p in dict.fromkeys(room.get("links") or []) if p in near]
        if shown:
            anchor = max(shown, key=near.get)
            scored_rooms.append((near[anchor], room, anchor))
    scored_rooms.sort(key=lambda entry: -entry[0])
    best = scored_rooms[:rooms]
    anchors = {room["id"]: anchor for _, room, anchor in best}
    look_alikes = set(anchors.values())

    scores: dict[str, float] = defaultdict(float)
    support: dict[str, list[str]] = defaultdict(list)
    for score, room, _ in best:
        for product in dict.fromkeys(room.get("links") or []):
            if product in leave_out or product in look_alikes or index.record("product", product) is None:
                continue
            scores[product] += score
            support[product].append(room["id"])
    ranked = sorted(scores, key=lambda p: (-scores[p], p))[:k]
    return GoesWith(
        products=[Hit.from_record(index.record("product", p), scores[p], rooms=tuple(support[p])) for p in ranked],
        rooms=[Hit.from_record(room, score) for score, room, _ in best],
        anchors=anchors,
    )
