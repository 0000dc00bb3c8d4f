"""`vislang serve` through FastAPI's test client: every endpoint, and every refusal as a 4xx JSON error."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import vislang  # noqa: E402
from vislang.cli.main import build_parser  # noqa: E402
from vislang.data import read_catalog  # noqa: E402
from vislang.search import Index  # noqa: E402
from vislang.search.hits import search_json  # noqa: E402
from vislang.serve.app import create_app  # noqa: E402
from vislang.serve.limits import Limits  # noqa: E402
from vislang.serve.run import MAX_REQUEST_HEAD  # noqa: E402
from vislang.serve.uploads import decode_upload  # noqa: E402
from vislang.serve.worker import ModelWorker, SearchOptions  # noqa: E402

from conftest import live_server, train_tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("serve_load", ROOT / "bench" / "serve_load.py")
serve_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_load)  # the bench's hostile requests and photo helpers

HIT_KEYS = {"id", "kind", "score", "rerank_score", "title", "type", "color", "image", "thumb"}
HOSTILE_IDS = ["../../etc/passwd", "%2e%2e%2fetc%2fpasswd", "..%2f..%2fetc%2fpasswd", "/etc/passwd", "nope"]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return vislang.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def index(model, tiny_catalog) -> Index:
    return Index.build(model, read_catalog(tiny_catalog), progress=False, gpu=False)


@pytest.fixture(scope="module")
def client(index):
    with TestClient(create_app(index)) as client:
        yield client


@pytest.fixture(scope="module")
def headless_client(tiny_catalog, tmp_path_factory):
    """A model trained with neither a matching head nor a caption decoder."""
    checkpoint = train_tiny(tiny_catalog, tmp_path_factory.mktemp("no-heads") / "run",
                            "model.matching.enabled=false", "model.decoder.enabled=false")
    index = Index.build(vislang.load(checkpoint, device="cpu"), read_catalog(tiny_catalog), progress=False, gpu=False)
    with TestClient(create_app(index)) as client:
        yield client


def photo_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def refused(response, status: int, words: str = "") -> str:
    """The response is the JSON refusal asked for: that status, {"error": one line naming `words`}."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "\n" not in body["error"] and words.lower() in body["error"].lower(), body["error"]
    return body["error"]


def still_answers(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


# ---------------------------------------------------------------- endpoints


def test_healthz_says_what_the_index_holds_and_the_model_can_do(client, headless_client):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["items"] == 56 and body["kinds"] == {"product": 48, "room": 8}
    assert body["caption"] is True and body["rerank"] is True and body["limits"]["max_k"] == Limits().max_k
    body = headless_client.get("/healthz").json()
    assert body["caption"] is False and body["rerank"] is False


def test_text_search_is_the_index_search_as_the_cli_writes_it(client, index):
    response = client.get("/api/search", params={"q": "a red chair", "k": 5, "kind": "product"})
    assert response.status_code == 200
    body = response.json()
    expected = index.search(texts="a red chair", k=5, kind="product")[0]
    cli = search_json(expected, "a red chair", None, "product", 5, None, False)
    assert set(body) == set(cli) and {key: body[key] for key in cli if key != "results"} == \
        {key: cli[key] for key in cli if key != "results"}
    assert [hit["id"] for hit in body["results"]] == [hit.id for hit in expected]
    assert [hit["score"] for hit in body["results"]] == pytest.approx([hit.score for hit in expected], abs=1e-6)
    for hit in body["results"]:
        assert set(hit) == HIT_KEYS and hit["kind"] == "product"
        # images are named by URL, never by a path on the server
        assert hit["image"] == f"/images/{hit['id']}?kind=product" and hit["thumb"] == f"/thumbs/{hit['id']}?kind=product"
    every_kind = client.get("/api/search", params={"q": "a room with a bed", "k": 12}).json()
    assert {hit["kind"] for hit in every_kind["results"]} == {"product", "room"} and every_kind["kind"] is None
    assert client.get("/api/search", params={"q": "a room with a bed", "kind": "all"}).json()["kind"] is None
    assert client.get("/api/search", params={"q": "a bed", "kind": "rooms"}).json()["kind"] == "room"


def test_rerank_and_the_reranker(client, index):
    body = client.get("/api/search", params={"q": "a red chair", "k": 5, "rerank": 5}).json()
    expected = index.search(texts="a red chair", k=5, rerank=5)[0]
    assert body["rerank"] == 5 and [hit["id"] for hit in body["results"]] == [hit.id for hit in expected]
    probabilities = [hit["rerank_score"] for hit in body["results"]]
    assert all(0 <= p <= 1 for p in probabilities) and probabilities == sorted(probabilities, reverse=True)
    body = client.get("/api/search", params={"q": "a cosy bedroom", "kind": "room", "reranker": "true", "k": 3}).json()
    expected = index.search(texts="a cosy bedroom", kind="room", reranker=True, k=3)[0]
    assert body["reranker"] is True and [hit["id"] for hit in body["results"]] == [hit.id for hit in expected]


def test_photo_and_photo_plus_text_search(client, index, tiny_catalog):
    path = tiny_catalog / "images" / "products" / "000.000.00.jpg"
    response = client.post("/api/search/image", files={"image": ("chair.jpg", photo_bytes(path), "image/jpeg")},
                           data={"k": "3", "kind": "product"})
    assert response.status_code == 200
    body = response.json()
    assert body["image"] == "chair.jpg" and body["query"] is None and body["results"][0]["id"] == "000.000.00"
    assert [hit["id"] for hit in body["results"]] == [hit.id for hit in index.search(images=path, k=3, kind="product")[0]]
    response = client.post("/api/search/image", files={"image": ("chair.jpg", photo_bytes(path), "image/jpeg")},
                           data={"q": "in blue", "k": "4", "text_weight": "0.7"})
    expected = index.search(texts="in blue", images=path, k=4, text_weight=0.7)[0]
    assert response.json()["query"] == "in blue"
    assert [hit["id"] for hit in response.json()["results"]] == [hit.id for hit in expected]


def test_similar_is_a_search_by_the_items_own_photo_without_it(client, index, tiny_catalog):
    own_photo = index.search(images=tiny_catalog / "images" / "products" / "000.000.00.jpg", k=5)[0]
    assert own_photo[0].id == "000.000.00"
    assert [hit.id for hit in index.similar("000.000.00", 4)] == [hit.id for hit in own_photo[1:]]
    assert index.find("room03")["kind"] == "room" and index.find("nothing") is None
    body = client.get("/api/similar/000.000.00", params={"k": 4}).json()
    assert body["item"]["id"] == "000.000.00" and body["item"]["title"] == index.record("product", "000.000.00")["title"]
    ids = [hit["id"] for hit in body["results"]]
    assert len(ids) == 4 and "000.000.00" not in ids and ids == [hit.id for hit in index.similar("000.000.00", 4)]
    rooms = client.get("/api/similar/000.000.00", params={"k": 3, "kind": "room"}).json()["results"]
    assert len(rooms) == 3 and {hit["kind"] for hit in rooms} == {"room"}
    room = client.get("/api/similar/room00", params={"k": 2, "kind": "room"}).json()
    assert room["item"]["kind"] == "room" and "room00" not in [hit["id"] for hit in room["results"]]


def test_goes_with_is_the_cli_answer(client, index):
    body = client.get("/api/goes-with/000.000.00", params={"k": 3}).json()
    expected = index.goes_with("000.000.00", k=3).to_json("000.000.00")
    assert [hit["id"] for hit in body["products"]] == [hit["id"] for hit in expected["products"]]
    assert [(hit["id"], hit["anchor"]) for hit in body["rooms"]] == [(hit["id"], hit["anchor"]) for hit in expected["rooms"]]
    assert body["products"] and all(hit["rooms"] for hit in body["products"])
    assert all(set(hit) == HIT_KEYS | {"rooms"} for hit in body["products"])


def test_caption_of_an_uploaded_photo(client, model, tiny_catalog):
    path = tiny_catalog / "images" / "products" / "000.000.00.jpg"
    response = client.post("/api/caption", files={"image": ("a.jpg", photo_bytes(path), "image/jpeg")})
    assert response.status_code == 200
    with Image.open(path) as image:
        assert response.json() == {"caption": model.caption([image.convert("RGB")])[0]}


def test_catalog_images_and_thumbnails_by_id(client, tiny_catalog):
    product = tiny_catalog / "images" / "products" / "000.000.00.jpg"
    response = client.get("/images/000.000.00")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == product.read_bytes()
    assert client.get("/images/room03", params={"kind": "room"}).content == (tiny_catalog / "images" / "rooms" / "room03.jpg").read_bytes()
    refused(client.get("/images/room03", params={"kind": "product"}), 404, "unknown id")
    response = client.get("/thumbs/room03")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (64, 48)  # never enlarged


def test_the_page_its_files_and_the_api_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text and '/static/style.css' in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/healthz", "/api/search", "/api/search/image", "/api/similar/{item_id}", "/api/caption",
            "/api/goes-with/{item_id}", "/images/{item_id}", "/thumbs/{item_id}"} <= paths


def test_the_serve_command_line():
    args = build_parser().parse_args(["serve", "--index", "runs/index"])
    assert (args.host, args.port, args.workers, args.max_batch) == ("127.0.0.1", 8000, 1, None)
    args = build_parser().parse_args(["serve", "--index", "x", "--port", "9000", "--workers", "2", "--max-batch", "1"])
    assert (args.port, args.workers, args.max_batch) == (9000, 2, 1)
    assert MAX_REQUEST_HEAD > 3 * 100_000  # 100 kB of query text, percent-encoded, reaches the app


# ---------------------------------------------------------------- refusals


def test_oversized_uploads_are_refused(client):
    too_big = b"\xff\xd8\xff" + b"\0" * (Limits().max_upload_bytes + 1)
    for endpoint in ("/api/search/image", "/api/caption"):
        refused(client.post(endpoint, files={"image": ("big.jpg", too_big, "image/jpeg")}), 413, "at most 10 MB")
        still_answers(client)


def test_a_png_declaring_30000_by_30000_pixels_is_refused_from_its_header(client):
    for width, height, words in ((30000, 30000, "megapixels"), (10000, 6000, "10000x6000 pixels, at most 50 megapixels")):
        data = serve_load.png_declaring(width, height)
        assert len(data) < 1000
        refused(client.post("/api/search/image", files={"image": ("bomb.png", data, "image/png")}), 422, words)
        refused(client.post("/api/caption", files={"image": ("bomb.png", data, "image/png")}), 422, "image too large")
        still_answers(client)


def test_what_is_not_an_image_is_refused_whatever_its_name(client):
    noise = Image.effect_noise((200, 200), 60).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    for name, data, status, words in (("notes.jpg", b"this is a text file, not a photo\n" * 20, 415, "not an image"),
                                      ("page.png", b"<html><script>alert(1)</script></html>", 415, "not an image"),
                                      ("cut.jpg", jpeg[: len(jpeg) * 2 // 3], 415, "damaged or truncated"),
                                      ("empty.jpg", b"", 422, "empty")):
        refused(client.post("/api/search/image", files={"image": (name, data, "image/jpeg")}), status, words)
        refused(client.post("/api/caption", files={"image": (name, data, "image/jpeg")}), status, words)
    refused(client.post("/api/search/image", data={"q": "a chair"}), 422, "image: field required")
    still_answers(client)


@pytest.mark.parametrize("item_id", HOSTILE_IDS)
def test_path_like_and_unknown_ids_are_only_ids_nothing_has(client, item_id):
    for endpoint in ("/images/", "/thumbs/", "/api/similar/", "/api/goes-with/"):
        response = client.get(endpoint + item_id)
        error = refused(response, 404)
        assert "root:" not in response.text and ("unknown id" in error or "not found" in error)
    still_answers(client)


def test_bad_k_rerank_kind_and_text_weight_are_refused(client, tiny_catalog):
    for params, words in (({"q": "chair", "k": 10**9}, "k must be between 1 and 100 (got 1000000000)"),
                          ({"q": "chair", "k": 0}, "k must be between 1 and 100"),
                          ({"q": "chair", "k": "ten"}, "k: "),
                          ({"q": "chair", "rerank": 10**6}, "rerank must be between 1 and 50"),
                          ({"q": "chair", "kind": "boats"}, "unknown kind 'boats'")):
        refused(client.get("/api/search", params=params), 422, words)
    refused(client.get("/api/similar/000.000.00", params={"k": 10**9}), 422, "k must be")
    refused(client.get("/api/goes-with/000.000.00", params={"rooms": 0}), 422, "rooms must be")
    path = tiny_catalog / "images" / "products" / "000.000.00.jpg"
    refused(client.post("/api/search/image", files={"image": ("a.jpg", photo_bytes(path), "image/jpeg")},
                        data={"q": "in blue", "text_weight": "2"}), 422, "text weight must be between 0 and 1")
    refused(client.post("/api/search/image", files={"image": ("a.jpg", photo_bytes(path), "image/jpeg")},
                        data={"rerank": "5"}), 422, "re-ranking needs a text")
    still_answers(client)


def test_empty_and_overlong_queries_are_refused(client, tiny_catalog):
    for params in ({}, {"q": ""}, {"q": "   "}):
        refused(client.get("/api/search", params=params), 422, "empty query")
    long_text = "sofa " * 2_000  # 10 kB: the test client's URLs stop at 64 kB (100 kB: test_hostile_requests_to_a_live_server)
    refused(client.get("/api/search", params={"q": long_text}), 422, "query text too long: 9999 characters, at most 1000")
    path = tiny_catalog / "images" / "products" / "000.000.00.jpg"
    refused(client.post("/api/search/image", files={"image": ("a.jpg", photo_bytes(path), "image/jpeg")},
                        data={"q": long_text}), 422, "query text too long")
    still_answers(client)


def test_hostile_requests_to_a_live_server(index):
    """The issue's hostile requests, as bench/serve_load.py --hostile sends them (raw, to uvicorn run
    as `vislang serve` runs it): each a 4xx JSON error, and a search answered after each."""
    with live_server(create_app(index)) as base:
        report = serve_load.check_hostile(base)
    assert len(report) == 12 and [entry for entry in report if not (entry["ok"] and entry["search_after"])] == []


def test_the_load_bench_against_vislang_serve(index, tmp_path):
    """bench/serve_load.py starts `vislang serve` itself, loads it with text and photo searches, and
    prints its figures as JSON on the last line."""
    index.save(tmp_path / "index")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_load.py"), "--index", str(tmp_path / "index"),
                           "--clients", "2", "--requests", "4", "--photo-share", "0.5", "--repeats", "1", "--json"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"p50_ms", "p99_ms", "errors", "requests", "rps"} <= set(result)
    assert result["errors"] == 0 and result["requests"] == 8 and result["index_items"] == 56
    assert 0 < result["p50_ms"] <= result["p99_ms"] and result["rps"] > 0
    assert sum(result["per_repeat"][0][kind]["requests"] for kind in ("text", "photo")) == 8


def test_a_model_without_heads_refuses_captions_and_rerank(headless_client, tiny_catalog):
    path = tiny_catalog / "images" / "products" / "000.000.00.jpg"
    refused(headless_client.post("/api/caption", files={"image": ("a.jpg", photo_bytes(path), "image/jpeg")}),
            409, "no caption decoder")
    refused(headless_client.get("/api/search", params={"q": "a chair", "rerank": 5}), 409, "no matching head")
    body = headless_client.get("/api/search", params={"q": "a chair", "k": 3}).json()
    assert len(body["results"]) == 3  # everything else works
    still_answers(headless_client)


def test_unknown_routes_and_methods_answer_json(client):
    refused(client.get("/api/nothing-here"), 404, "not found: /api/nothing-here")
    refused(client.get("/api/caption"), 405, "method not allowed")
    refused(client.post("/api/search", json={"q": "chair"}), 405)


def test_a_failure_inside_is_a_json_500_and_the_server_goes_on(index, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    with TestClient(create_app(index), raise_server_exceptions=False) as client:
        monkeypatch.setattr(index, "similar", broken)
        refused(client.get("/api/similar/000.000.00"), 500, "internal error (RuntimeError)")
        assert client.get("/api/search", params={"q": "a chair"}).status_code == 200


# ---------------------------------------------------------------- the worker and uploads


class _Blocked:
    """Holds the worker's thread until released, so that searches queue up behind it."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self) -> None:
        self.started.set()
        assert self.release.wait(30)


@contextlib.contextmanager
def held_worker(index, **kwargs) -> Iterator[tuple[ModelWorker, _Blocked]]:
    """A started worker whose thread is held by a `_Blocked` call until the test releases it."""
    worker = ModelWorker(index, **kwargs)
    worker.start()
    try:
        blocked = _Blocked()
        worker.call(blocked)
        assert blocked.started.wait(30)
        yield worker, blocked
    finally:
        worker.stop()


def test_waiting_searches_run_as_one_batch_with_each_its_own_answer(index):
    with held_worker(index, max_batch=32) as (worker, blocked):
        texts = ["a red chair", "a blue lamp", "a green table", "a yellow bed", "a room with a bed"]
        options = SearchOptions(k=4, kind="product")
        futures = [worker.search(text, None, options) for text in texts]
        other = worker.search("a red chair", None, SearchOptions(k=2))  # other options: a batch of its own
        bad = worker.search("a red chair", None, SearchOptions(k=4, kind="boats"))
        blocked.release.set()
        for text, future in zip(texts, futures):
            assert [hit.id for hit in future.result(30)] == [hit.id for hit in index.search(texts=text, k=4, kind="product")[0]]
        assert len(other.result(30)) == 2
        with pytest.raises(Exception, match="unknown kind"):
            bad.result(30)
        assert worker.batch_sizes[len(texts)] == 1 and worker.batch_sizes[1] == 1


def test_waiting_texts_go_before_photos_and_calls_which_go_in_turn(index, tiny_catalog):
    with held_worker(index) as (worker, blocked):
        finished: list[str] = []
        photo = Image.open(tiny_catalog / "images" / "products" / "000.000.00.jpg").convert("RGB")
        queued = {"photo": worker.search(None, photo, SearchOptions(k=3)), "call": worker.call(len, "abc"),
                  "photo 2": worker.search(None, photo, SearchOptions(k=3)),
                  "text 1": worker.search("a red chair", None, SearchOptions(k=3)),
                  "text 2": worker.search("a blue lamp", None, SearchOptions(k=3))}
        for name, future in queued.items():
            future.add_done_callback(lambda _, name=name: finished.append(name))
        blocked.release.set()
        assert queued["call"].result(30) == 3 and all(len(future.result(30)) == 3 for name, future in queued.items() if name != "call")
        # the texts, as one batch; then the oldest other unit (both photos, which share their
        # options, as one batch); then the call
        assert finished == ["text 1", "text 2", "photo", "photo 2", "call"]
        assert worker.batch_sizes == {2: 2}


def test_one_bad_query_does_not_fail_its_batch(index, monkeypatch):
    with held_worker(index) as (worker, blocked):
        options = SearchOptions(k=3)
        good, bad = worker.search("a red chair", None, options), worker.search("", None, options)  # "" is refused
        cancelled = worker.search("a blue lamp", None, options)
        assert cancelled.cancel()  # its client went away: skipped
        blocked.release.set()
        assert len(good.result(30)) == 3
        with pytest.raises(Exception, match="empty query"):
            bad.result(30)
        assert cancelled.cancelled()


def test_the_worker_refuses_work_when_stopped(index):
    worker = ModelWorker(index)
    with pytest.raises(RuntimeError, match="not running"):
        worker.search("a chair", None, SearchOptions(k=1))
    with pytest.raises(ValueError, match="max_batch"):
        ModelWorker(index, max_batch=0)


def test_uploads_are_decoded_upright_and_small(tmp_path):
    photo = Image.new("RGB", (4000, 3000), (200, 120, 40))
    exif = photo.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to show it upright
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", exif=exif)
    image = decode_upload(buffer.getvalue(), Limits(), min_side=224)
    assert image.mode == "RGB" and image.size[0] < image.size[1]  # turned upright
    assert 224 <= min(image.size) < 3000  # decoded at a reduced scale, never below the model's input
    rgba = io.BytesIO()
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(rgba, "PNG")
    assert decode_upload(rgba.getvalue(), Limits(), 32).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
