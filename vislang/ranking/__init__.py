"""Ranking at query time, on top of the embeddings (which are the product; no model holds any of this).

    reranker.py       Reranker: the opt-in terms added to text <-> image scores, and their settings
    lookalike.py      an image described by the captions of the training images that look like it
    room_category.py  the kind of room a room photo or title is, read from the training rooms like it
"""
from .reranker import Bank, RerankSettings, Reranker

__all__ = ["Bank", "RerankSettings", "Reranker"]
