"""Room photo -> products: the training rooms that look like the photo vote for the products they show.

A 64-px room photo hardly shows the products in it, but rooms that look alike (a white kitchen, a
child's bedroom) tend to be furnished from the same series. Each training room votes for each
product it lists with weight exp((cos(photo, room) - 1) / temperature): 1 for an identical photo,
falling fast with distance, summed over every training room, so a photo like none of them gets
almost no vote (a kernel regression over the rooms, not a fixed number of neighbours). The vote is
added, times a weight (`model.room_vote`), to the photo's cosine with each product; the weight and
temperature were chosen on one run's val; over three runs val gains about a point, test about four
(docs/RESULTS.md, fifteenth session).
"""
from __future__ import annotations

import numpy as np


def room_vote(queries: np.ndarray, rooms: np.ndarray, links: np.ndarray, temperature: float,
              exclude: np.ndarray | None = None) -> np.ndarray:
    """[Q, P]: each query's vote for each product.

    queries [Q, D] and rooms [R, D] are unit embeddings of room photos; links [R, P] is 1 where
    training room r lists product p. exclude [Q, R] (bool) drops rooms from a query's vote: a query
    that is itself a training room must not vote for its own products."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    weights = np.exp((queries @ rooms.T - 1.0) / temperature)
    if exclude is not None:
        weights = np.where(exclude, 0.0, weights)
    return (weights @ links).astype(np.float32)
