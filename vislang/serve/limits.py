"""What one request may ask of the service, and the error that refuses it with an HTTP status."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MB = 2**20


class ApiError(Exception):
    """A request the service refuses: its HTTP status (4xx) and a one-line message for the JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * MB  # one uploaded photo
    # decoded pixels of an upload: a 48-megapixel phone photo passes; a PNG of a few kB declaring
    # 30000 x 30000 (2.7 GB of RGB once decoded) is refused from its header, before decoding
    max_pixels: int = 50_000_000
    max_k: int = 100  # results per query
    max_rerank: int = 50  # hits re-scored by the matching head: each reads and encodes a catalog photo
    max_query_chars: int = 1000  # a long product description fits; 100 kB of text is refused

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def check_k(self, k: int, name: str = "k") -> int:
        if not 1 <= k <= self.max_k:
            raise ApiError(422, f"{name} must be between 1 and {self.max_k} (got {k})")
        return k

    def check_rerank(self, rerank: int | None) -> int | None:
        if rerank is not None and not 1 <= rerank <= self.max_rerank:
            raise ApiError(422, f"rerank must be between 1 and {self.max_rerank} (got {rerank})")
        return rerank

    def check_text(self, text: str | None, required: bool) -> str | None:
        """The query text stripped; None when absent and not required. Empty or too long: refused."""
        text = (text or "").strip()
        if len(text) > self.max_query_chars:
            raise ApiError(422, f"query text too long: {len(text)} characters, at most {self.max_query_chars}")
        if not text and required:
            raise ApiError(422, "empty query: type what you are looking for")
        return text or None
