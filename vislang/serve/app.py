"""The FastAPI app: the index's searches as HTTP endpoints, catalog images by id, and the page at `/`.

A thin layer over vislang.search, as clip-retrieval's back end is over its index: each endpoint
checks what the request may ask (limits.py), hands the work to the model worker (worker.py) and
writes the answer with the JSON that `vislang search --json` and `vislang goes-with --json` print,
images named by URL instead of server paths. Every refusal is a 4xx status with a JSON body
{"error": "<one line>"}; anything else that goes wrong is a 500 with the same body, and the
server goes on answering.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..api import MissingHeadError
from ..search import Hit, Index, SearchError
from ..search.hits import search_json
from ..search.query import DEFAULT_TEXT_WEIGHT, check_query
from .images import CatalogImages
from .limits import ApiError, BodyLimit, Limits, error_response
from .uploads import decode_upload, upload_too_large
from .worker import DEFAULT_MAX_BATCH, ModelWorker, SearchOptions

STATIC = Path(__file__).resolve().parent / "static"
# room in a request body beyond the photo itself: the multipart framing and the text fields
FORM_OVERHEAD = 64 * 1024
IMAGE_CACHE = "public, max-age=3600"
log = logging.getLogger("vislang.serve")


def hit_json(hit: Hit) -> dict[str, Any]:
    """A hit as `vislang search --json` writes it, its image named by the service's URLs."""
    ref = f"{quote(hit.id, safe='')}?kind={quote(hit.kind, safe='')}"
    return {**hit.to_json(), "image": f"/images/{ref}", "thumb": f"/thumbs/{ref}"}


def create_app(index: Index, limits: Limits = Limits(), max_batch: int = DEFAULT_MAX_BATCH) -> FastAPI:
    """The service over `index`. Its model is loaded here, once, so the first request does not wait for it."""
    model = index.model
    worker = ModelWorker(index, max_batch)
    catalog_images = CatalogImages(index)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="vislang search", version=__version__, lifespan=lifespan,
                  description="Search a furniture catalog by text, by photo or both; captions and 'goes with'. "
                              "Every error is a JSON body {\"error\": \"...\"} with a 4xx status.")
    app.state.index, app.state.worker = index, worker
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes + FORM_OVERHEAD, message=upload_too_large(limits))
    _add_error_handlers(app, limits)

    def options(k: int, kind: str | None, rerank: int | None = None, reranker: bool = False,
                text_weight: float | None = None) -> SearchOptions:
        if rerank is not None and not model.has("matching"):
            raise ApiError(409, "this model has no matching head: re-ranking (rerank=N) needs one")
        kind = None if kind in (None, "", "all") else index.check_kind(kind)
        return SearchOptions(limits.check_k(k), kind, limits.check_rerank(rerank), reranker, text_weight)

    async def search(text: str | None, photo: Image.Image | None, opts: SearchOptions) -> list[Hit]:
        # refused here, alone, rather than failing the batch it would have joined
        check_query([text] if text else [], [photo] if photo else [], opts.k, opts.rerank,
                    DEFAULT_TEXT_WEIGHT if opts.text_weight is None else opts.text_weight, opts.reranker)
        return await done(worker.search(text, photo, opts))

    async def photo_of(upload: UploadFile) -> Image.Image:
        data = await upload.read()
        return await run_in_threadpool(decode_upload, data, limits, model.image_size)

    @app.get("/healthz", summary="Liveness, what the index holds and what the model can do")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "items": len(index),
                "kinds": {kind: len(part.records) for kind, part in index.parts.items()},
                "caption": model.has("decoder"), "rerank": model.has("matching"),
                "limits": limits.to_json(), "search_batches": dict(sorted(worker.batch_sizes.items()))}

    @app.get("/api/search", summary="Search by text (JSON as `vislang search --json`)")
    async def search_text(q: str = "", k: int = 10, kind: str | None = None, rerank: int | None = None,
                          reranker: bool = False) -> dict[str, Any]:
        text = limits.check_text(q, required=True)
        opts = options(k, kind, rerank, reranker)
        hits = await search(text, None, opts)
        return search_json(hits, text, None, opts.kind, k, opts.rerank, reranker, hit_json)

    @app.post("/api/search/image", summary="Search by photo, optionally with a text: 'like this, in oak'")
    async def search_image(image: UploadFile = File(..., description="a JPEG, PNG, WebP, GIF or BMP photo"),
                           q: str = Form("", description="optional text combined with the photo"),
                           k: int = Form(10), kind: str | None = Form(None),
                           text_weight: float | None = Form(None, description="0 to 1, the text's share"),
                           rerank: int | None = Form(None), reranker: bool = Form(False)) -> dict[str, Any]:
        text = limits.check_text(q, required=False)
        opts = options(k, kind, rerank, reranker, text_weight)
        hits = await search(text, await photo_of(image), opts)
        return search_json(hits, text, image.filename, opts.kind, k, opts.rerank, reranker, hit_json)

    @app.get("/api/similar/{item_id:path}", summary="More like this: the items nearest an indexed item")
    async def similar(item_id: str, k: int = 10, kind: str | None = None) -> dict[str, Any]:
        record = catalog_images.record(item_id)
        opts = options(k, kind)
        hits = await done(worker.call(index.similar, item_id, opts.k, opts.kind))
        return {"item": hit_json(Hit.from_record(record, 1.0)), **search_json(hits, None, None, opts.kind, k, None,
                                                                              False, hit_json)}

    @app.get("/api/goes-with/{item_id:path}", summary="Products seen in rooms with products like this one")
    async def goes_with(item_id: str, k: int = 10, rooms: int = 10) -> dict[str, Any]:
        record = catalog_images.record(item_id)
        result = await done(worker.call(index.goes_with, item_id, k=limits.check_k(k),
                                        rooms=limits.check_k(rooms, "rooms")))
        return {"item": hit_json(Hit.from_record(record, 1.0)), **result.to_json(item_id, hit_json)}

    @app.post("/api/caption", summary="A generated caption of a photo (models with a caption decoder)")
    async def caption(image: UploadFile = File(..., description="a JPEG, PNG, WebP, GIF or BMP photo")) -> dict[str, str]:
        if not model.has("decoder"):
            raise ApiError(409, "this model has no caption decoder: train one with model.decoder.enabled=true")
        photo = await photo_of(image)
        return {"caption": (await done(worker.call(model.caption, [photo])))[0]}

    @app.get("/images/{item_id:path}", summary="A catalog image, by item id", response_class=Response)
    async def original(item_id: str, kind: str | None = None) -> Response:
        data, media_type = await run_in_threadpool(catalog_images.original, item_id, kind)
        return Response(data, media_type=media_type, headers={"Cache-Control": IMAGE_CACHE})

    @app.get("/thumbs/{item_id:path}", summary="A catalog image's thumbnail (JPEG), by item id", response_class=Response)
    async def thumbnail(item_id: str, kind: str | None = None) -> Response:
        data = await run_in_threadpool(catalog_images.thumbnail, item_id, kind)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": IMAGE_CACHE})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def done(future: Future) -> Any:
    """The result of the worker's future, awaited without holding a thread."""
    return await asyncio.wrap_future(future)


def _add_error_handlers(app: FastAPI, limits: Limits) -> None:
    @app.exception_handler(ApiError)
    async def refused(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        messages = {413: upload_too_large(limits), 404: f"not found: {request.url.path}"}
        return error_response(err.status_code, messages.get(err.status_code, str(err.detail)))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = ["{}: {}".format(".".join(str(part) for part in error["loc"][1:]) or "request", error["msg"])
                    for error in err.errors()]
        return error_response(422, "; ".join(problems))

    @app.exception_handler(MissingHeadError)
    async def missing_head(_: Request, err: MissingHeadError) -> JSONResponse:
        return error_response(409, str(err))

    @app.exception_handler(SearchError)
    async def bad_query(_: Request, err: SearchError) -> JSONResponse:
        return error_response(422, str(err))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error ({type(err).__name__}); the server goes on")
