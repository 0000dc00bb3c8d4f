"""Room photo -> products in an index: each product's cosine with the photo plus the votes of the
indexed rooms that look like the photo, as `vislang eval` ranks room photo -> products.

A 64-px room photo shows its products poorly, but rooms that look alike are furnished from the same
series: each indexed room votes for the products it lists (models/room_vote.py, with the model's
weight and temperature). eval adds the cosine with each product's caption as well; the index holds
no caption vectors, and leaving them out costs little (docs/RESULTS.md, sixteenth session). Unlike
eval, a photo of an indexed room counts that room's vote for its own products: for a user asking
"what is in this room" that is the right answer, not a leak.

Only the `VOTING_ROOMS` rooms nearest the photo vote: a room's vote falls as exp((cos - 1) / T), so
beyond the nearest few hundred it is noise; IKEA's 215 rooms all vote.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import QueryError
from .hits import Hit

if TYPE_CHECKING:
    from .index import Index

VOTING_ROOMS = 256
SHOWN_VOTERS = 3  # a hit names the rooms whose votes weigh most for it


def check_room_query(texts: list, images: list, kind: str | None, rerank: int | None) -> None:
    """Refuse, before any work, what a room-photo search cannot answer."""
    if texts or not images:
        raise QueryError("a room search ranks products for a room photo: give a photo and no text")
    if kind not in (None, "product", "products"):
        raise QueryError(f"a room search returns products, not {kind}s: leave the kind out")
    if rerank:
        raise QueryError("re-ranking needs a text query; a room search has only a photo")


def room_photo_hits(index: Index, photos: np.ndarray, k: int) -> list[list[Hit]]:
    """For each room photo embedding [Q, D], the k best products of the index, best first; each
    hit's score is cosine + votes and its `rooms` the rooms that voted most for it."""
    missing = [kind for kind in ("product", "room") if kind not in index.parts]
    if missing:
        raise QueryError(f"a room search needs products and rooms in the index; it has no {' or '.join(missing)}s "
                         "(build it with --kinds rooms,products)")
    if not index.model.config["model"]["room_vote"]["weight"]:
        raise QueryError("this model was trained without room votes (model.room_vote.weight 0): "
                         "search the photo without --room")
    products, rooms = index.parts["product"], index.parts["room"]
    product_label = {record["id"]: label for label, record in enumerate(products.records)}
    room_label = {record["id"]: label for label, record in enumerate(rooms.records)}
    by_photo = index.search_vectors(photos, k, "product")
    near_rooms = index.search_vectors(photos, min(VOTING_ROOMS, len(rooms.records)), "room")
    results = []
    for photo, photo_hits, room_hits in zip(photos, by_photo, near_rooms):
        voters = [room_label[hit.id] for hit in room_hits]
        listed = [[product_label[p] for p in dict.fromkeys(rooms.records[r].get("links") or []) if p in product_label]
                  for r in voters]
        voters, listed = [r for r, ls in zip(voters, listed) if ls], [ls for ls in listed if ls]
        # a product outside the photo's top k can only rise into it by its votes: the top k and
        # the voted-for products hold every product of the answer
        candidates = sorted({product_label[hit.id] for hit in photo_hits} | {p for ls in listed for p in ls})
        column = {label: c for c, label in enumerate(candidates)}
        links = np.zeros((len(voters), len(candidates)), np.float32)
        for row, ls in enumerate(listed):
            links[row, [column[p] for p in ls]] = 1.0
        # each voter's weighted vote: the vote of a room listing only itself
        weights = (index.model.room_vote(photo[None], index.embeddings("room", voters), np.eye(len(voters), dtype=np.float32))[0]
                   if voters else np.zeros(0, np.float32))
        scores = index.embeddings("product", candidates) @ photo + weights @ links
        hits = []
        for c in np.argsort(-scores, kind="stable")[:k]:
            shown = [rooms.records[voters[r]]["id"] for r in np.argsort(-weights * links[:, c], kind="stable")
                     if links[r, c]][:SHOWN_VOTERS]
            hits.append(Hit.from_record(products.records[candidates[c]], scores[c], rooms=tuple(shown)))
        results.append(hits)
    return results
