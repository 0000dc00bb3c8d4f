"""What can go wrong with an index or a query that is the user's to fix: the CLI prints one line, exit 2."""
from __future__ import annotations


class SearchError(ValueError):
    """Base of the search errors."""


class IndexFormatError(SearchError):
    """Index files missing, corrupt or of an unknown format."""


class IndexMismatchError(SearchError):
    """The index and the model do not belong together (another checkpoint, another dimension)."""


class QueryError(SearchError):
    """A query that cannot be run: empty, an unknown id or kind, a re-rank without text."""


class FactoryError(SearchError):
    """A FAISS factory string that faiss does not know, or that the collection is too small for."""
