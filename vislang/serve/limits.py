"""What one request may ask of the service, the error that refuses it, and the request body's cap."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def error_response(status: int, message: str) -> JSONResponse:
    """Every error the service answers: {"error": "<one line>"}."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is refused with a JSON 413, at once when
    its Content-Length says so (before a byte of it is read), else as it streams in. (Starlette's
    limiter answers a declared-too-long body in plain text, whatever the app's error handlers say.)"""

    def __init__(self, app: ASGIApp, max_bytes: int, message: str) -> None:
        self.app, self.max_bytes, self.message = app, max_bytes, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await error_response(413, self.message)(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413)  # FastAPI re-raises it from the body's parsing; the app answers it
            return message

        await self.app(scope, counted, send)
