"""`vislang serve`: load the index and its model once, then answer HTTP under uvicorn."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from ..search.index import Index, open_index
from .app import create_app
from .worker import DEFAULT_MAX_BATCH

ENVIRONMENT = "VISLANG_SERVE"  # the settings, as JSON, for the worker processes of --workers N
# The request line and headers uvicorn's HTTP parser (h11) accepts. Its default, 16 kB, answers a
# longer query string with a plain-text 400 before the app sees it; with this, the app refuses
# 100 kB of query text with its own JSON error (limits.py caps the text itself at 1000 characters).
MAX_REQUEST_HEAD = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    index: str
    checkpoint: str | None = None
    device: str | None = None
    max_batch: int = DEFAULT_MAX_BATCH


def load_app(settings: ServeSettings) -> FastAPI:
    return create_app(open_index(settings.index, settings.checkpoint, settings.device), max_batch=settings.max_batch)


def app_from_environment() -> FastAPI:
    """The app of one of several worker processes (uvicorn imports this by name in each)."""
    return load_app(ServeSettings(**json.loads(os.environ[ENVIRONMENT])))


def uvicorn_options(host: str, port: int) -> dict[str, Any]:
    """uvicorn's settings for the service (the tests' live server uses them too)."""
    return {"host": host, "port": port, "http": "h11", "h11_max_incomplete_event_size": MAX_REQUEST_HEAD}


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve until interrupted. With several workers each process loads its own model and index."""
    options = uvicorn_options(host, port)
    if workers == 1:
        app = load_app(settings)  # a missing index or checkpoint fails here, before the port is taken
        print(f"serving {settings.index}: {app.state.index.summary()}", flush=True)
        uvicorn.run(app, **options)
        return
    print(f"serving {settings.index} with {workers} worker processes: {Index.load(settings.index).summary()}", flush=True)
    os.environ[ENVIRONMENT] = json.dumps(asdict(settings))
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **options)
