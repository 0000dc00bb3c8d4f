"""Search: a FAISS index over a trained model's image embeddings (on the GPU when faiss sees one).

    index.py      Index: build / add / search (opt-in re-ranker) / similar / goes_with, and the index folder on disk
    factory.py    which FAISS index for how many vectors (`auto`), building it, tuning nprobe/efSearch
    device.py     GPU or CPU placement of a FAISS index
    query.py      query vectors from text, photo or both; re-ranking by the matching head
    goes_with.py  products that appear in rooms with products like the query
    hits.py       stored records and returned hits
    files.py      atomic writes, hashes, the model fingerprint
    errors.py     the errors that are the user's to fix
"""
from .errors import (
    FactoryError,
    IndexFormatError,
    IndexMismatchError,
    QueryError,
    SearchError,
)
from .goes_with import GoesWith
from .hits import Hit
from .index import Index

__all__ = ["FactoryError", "GoesWith", "Hit", "Index", "IndexFormatError", "IndexMismatchError", "QueryError", "SearchError"]
