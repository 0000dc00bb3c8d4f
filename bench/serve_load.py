"""Load on `vislang serve`: N concurrent clients on loopback, a bounded number of requests each.

What it measures: each client (a thread with its own keep-alive connection) sends `--requests`
requests one after another, as fast as answers come: text searches (GET /api/search, 50 distinct
shop queries, each client starting at another) and, for `--photo-share` of them, photo searches
(POST /api/search/image with a catalog photo, every other one with a text beside it: "in oak").
A request counts as an error unless it is answered 200 with results. Per repeat: p50 / p99 / mean /
max latency (from sending the request to reading the whole answer), requests per second over the
repeat's wall time, errors; the headline figures are the medians over `--repeats` repeats. The
server's own count of search batches by size (GET /healthz) says how much batching happened.

`--hostile` then sends the requests a public server meets (an oversized upload, declared and
chunked; a PNG declaring 30000 x 30000 pixels; a text file named .jpg; path-like ids; k=10^9; an
empty query; 100 kB of query text), each written raw (no client tidies the path), and checks that
each is answered with a 4xx JSON error and that a search is answered after it.

The server is `vislang serve --index DIR` started by this script on a free port (`--max-batch`
passed on), or the one at `--url`. Photos come from the index's records (`--index`) or `--photos DIR`.

Usage (from the repository root):
    python bench/serve_load.py --index runs/index [--clients 16] [--requests 50] [--photo-share 0.5]
        [--repeats 3] [--max-batch N] [--hostile] [--json]
    python bench/serve_load.py --url http://127.0.0.1:8000 --photos DIR [...]
--json prints every figure as one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
TEXT_QUERIES = [
    "a bright scandinavian kitchen", "a black office chair", "a cosy bedroom with a double bed",
    "a white bookcase", "a grey three-seat sofa", "a children's room with bunk beds", "an oak dining table",
    "a small home office", "a bathroom with a wash-basin", "a glass vase", "a floor lamp", "a wardrobe with sliding doors",
    "a chest of drawers in white", "a kitchen with a wooden worktop", "a dining room for six", "a rug, flatwoven",
    "a pendant lamp shade", "a bedside table", "a living room with a corner sofa", "an armchair in blue",
    "a mirror", "a shoe cabinet", "a desk with drawers", "a hallway with coat hooks", "a TV bench",
    "a wall shelf in stainless steel", "a cushion cover", "curtains, 1 pair", "a sofa-bed", "a bar stool",
    "a storage box", "a laundry room", "an outdoor patio with chairs", "a baby's cot", "a step stool",
    "a picture frame", "a kitchen trolley", "a clothes rack", "a high cabinet with glass doors", "a throw",
    "a dining chair in black", "a wall clock", "a coffee table in oak", "a bed frame with storage",
    "a calm white bedroom", "a loft bed with a desk", "a plant pot", "a table lamp", "a display cabinet", "a footstool",
]
PHOTO_TEXTS = ["in oak", "in white", "in black", "in blue"]


# ---------------------------------------------------------------- requests, written raw


def send(base: str, method: str, target: str, body: bytes | Iterable[bytes] = b"",
         headers: dict[str, str] | None = None, connection: http.client.HTTPConnection | None = None,
         ) -> tuple[int, str, bytes]:
    """One request as written (the path is not normalised, the URL not capped): (status, content type,
    body). A body that is not bytes (an iterator of chunks) is sent chunked, with no Content-Length."""
    own = connection is None
    if own:
        parts = urlsplit(base)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        connection.request(method, target, body=body, headers=headers or {}, encode_chunked=not isinstance(body, bytes))
        response = connection.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        if own:
            connection.close()


def multipart(filename: str, data: bytes, fields: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with the photo as field "image", and its Content-Type header."""
    boundary = "vislang-bench-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in (fields or {}).items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 "Content-Type: image/jpeg\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few kB whose header declares width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


def hostile_requests(caption: bool) -> list[tuple[str, str, str, bytes | Iterable[bytes], dict[str, str], int]]:
    """(name, method, target, body, headers, expected status) of each request a public server meets.
    `caption`: whether the server's model has a caption decoder (else a caption is refused first, 409)."""
    oversized, form = multipart("big.jpg", b"\xff\xd8" + b"\0" * (11 * 2**20))
    return [
        ("oversized upload (11 MB, Content-Length)", "POST", "/api/search/image", oversized, form, 413),
        ("oversized upload (11 MB, chunked)", "POST", "/api/search/image",
         (oversized[i : i + 2**20] for i in range(0, len(oversized), 2**20)), form, 413),
        ("PNG declaring 30000x30000 pixels", "POST", "/api/search/image", *multipart("bomb.png", png_declaring(30000, 30000)), 422),
        ("PNG declaring 30000x30000 pixels, caption", "POST", "/api/caption", *multipart("bomb.png", png_declaring(30000, 30000)),
         422 if caption else 409),
        ("text file named .jpg", "POST", "/api/search/image", *multipart("notes.jpg", b"just some text\n" * 200), 415),
        ("id ../../etc/passwd (image)", "GET", "/images/../../etc/passwd", b"", {}, 404),
        ("id %2e%2e%2f (thumbnail)", "GET", "/thumbs/%2e%2e%2f%2e%2e%2fetc%2fpasswd", b"", {}, 404),
        ("id ..%2F..%2Fetc%2Fpasswd (similar)", "GET", "/api/similar/..%2F..%2Fetc%2Fpasswd", b"", {}, 404),
        ("id ../../../etc/passwd (goes-with)", "GET", "/api/goes-with/../../../etc/passwd", b"", {}, 404),
        ("k=10^9", "GET", "/api/search?q=sofa&k=1000000000", b"", {}, 422),
        ("empty query", "GET", "/api/search?q=", b"", {}, 422),
        ("100 kB of query text", "GET", "/api/search?q=" + "sofa%20" * 20_000, b"", {}, 422),
    ]


def check_hostile(base: str) -> list[dict[str, Any]]:
    """Each hostile request's answer, and whether a search was answered right after it."""
    report = []
    for name, method, target, body, headers, expected in hostile_requests(health(base)["caption"]):
        try:
            status, content_type, text = send(base, method, target, body, headers)
            error = json.loads(text).get("error") if content_type.startswith("application/json") else None
        except (OSError, ValueError, http.client.HTTPException) as err:
            status, content_type, error = None, "", f"no answer: {err}"
        after, _, answer = send(base, "GET", "/api/search?q=a%20sofa&k=3")
        report.append({"request": name, "status": status, "expected": expected, "error": error,
                       "json": content_type.startswith("application/json"),
                       "ok": status == expected and content_type.startswith("application/json") and bool(error),
                       "search_after": after == 200 and len(json.loads(answer)["results"]) == 3})
    return report


# ---------------------------------------------------------------- load


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (p99 of 800 requests: the 792nd fastest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def run_load(base: str, clients: int, requests: int, photo_share: float, photos: list[tuple[str, bytes]],
             k: int, seed: int) -> dict[str, Any]:
    """Every client's requests, timed; latency figures in ms, requests/s over the wall time."""
    latencies: dict[str, list[float]] = {"text": [], "photo": []}
    errors: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        parts = urlsplit(base)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        start_line.wait()
        for i in range(requests):
            photo = photos and rng.random() < photo_share
            if photo:
                name, data = photos[rng.randrange(len(photos))]
                text = PHOTO_TEXTS[i % len(PHOTO_TEXTS)] if i % 2 else ""
                body, headers = multipart(name, data, {"q": text, "k": str(k)} if text else {"k": str(k)})
                request = ("POST", "/api/search/image", body, headers)
            else:
                query = TEXT_QUERIES[(number * 7 + i) % len(TEXT_QUERIES)]
                request = ("GET", f"/api/search?q={quote(query)}&k={k}", b"", {})
            began = time.perf_counter()
            try:
                status, _, answer = send(base, *request, connection=connection)
                ok = status == 200 and len(json.loads(answer)["results"]) > 0
                problem = "" if ok else f"{status}: {answer[:120]!r}"
            except (OSError, ValueError, http.client.HTTPException) as err:
                problem = f"{type(err).__name__}: {err}"
                connection.close()  # reconnect on the next request
            elapsed = (time.perf_counter() - began) * 1000
            with lock:
                latencies["photo" if photo else "text"].append(elapsed)
                if problem:
                    errors.append(problem)
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    every = latencies["text"] + latencies["photo"]
    result = {"requests": len(every), "errors": len(errors), "first_errors": errors[:3], "wall_s": round(wall, 2),
              "rps": round(len(every) / wall, 1), **figures(every)}
    for kind, values in latencies.items():
        if values:
            result[kind] = {"requests": len(values), **figures(values)}
    return result


def figures(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values), 1), "p99_ms": round(percentile(values, 0.99), 1),
            "mean_ms": round(statistics.fmean(values), 1), "max_ms": round(max(values), 1)}


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(base: str) -> dict[str, Any] | None:
    try:
        status, _, body = send(base, "GET", "/healthz")
        return json.loads(body) if status == 200 else None
    except OSError:
        return None


def start_server(index: Path, max_batch: int | None, log: Path) -> tuple[subprocess.Popen, str]:
    """`vislang serve` of this checkout on a free loopback port, once it answers /healthz."""
    port = free_port()
    command = [sys.executable, "-m", "vislang", "serve", "--index", str(index), "--port", str(port)]
    command += ["--max-batch", str(max_batch)] if max_batch else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"vislang serve exited ({process.returncode}):\n{log.read_text()[-2000:]}")
        if health(base):
            return process, base
        time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"vislang serve did not answer /healthz within 600 s:\n{log.read_text()[-2000:]}")


def catalog_photos(index: Path | None, folder: Path | None, count: int, seed: int) -> list[tuple[str, bytes]]:
    """`count` photos (name, bytes): from --photos, else the images the index's records name."""
    if folder is not None:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    else:
        sys.path.insert(0, str(ROOT))
        from vislang.search import Index

        loaded = Index.load(index)
        paths = [Path(record["image"]) for part in loaded.parts.values() for record in part.records]
    chosen = random.Random(seed).sample(paths, min(count, len(paths)))
    return [(path.name, path.read_bytes()) for path in chosen]


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", type=Path, help="index folder: start `vislang serve` on it")
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--photos", type=Path, help="folder of photos to upload (default: the index's images)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--photo-share", type=float, default=0.0, help="share of photo searches, 0 to 1")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, help="passed to vislang serve (default: its own)")
    parser.add_argument("--hostile", action="store_true", help="then send the hostile requests and check each answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.photo_share > 0 and args.url and not args.photos:
        parser.error("--photo-share with --url needs --photos DIR")

    photos = catalog_photos(args.index, args.photos, 32, args.seed) if args.photo_share > 0 else []
    process = None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            if args.url:
                base = args.url.rstrip("/")
            else:
                process, base = start_server(args.index, args.max_batch, Path(scratch) / "serve.log")
            before = health(base)
            for i in range(5):  # warm-up: the first requests of a process are slower
                send(base, "GET", f"/api/search?q={quote(TEXT_QUERIES[i])}&k={args.k}")
                if photos:
                    send(base, "POST", "/api/search/image", *multipart(*photos[i % len(photos)]))
            repeats = []
            for repeat in range(args.repeats):
                repeats.append(run_load(base, args.clients, args.requests, args.photo_share, photos, args.k,
                                        args.seed + repeat))
                print(f"repeat {repeat + 1}: {json.dumps(repeats[-1])}", flush=True)
            hostile = check_hostile(base) if args.hostile else None
            after = health(base)
        finally:
            if process is not None:
                process.terminate()
                process.wait(30)

    result: dict[str, Any] = {
        "machine": machine(), "loadavg_at_start": os.getloadavg(), "clients": args.clients,
        "requests_per_client": args.requests, "photo_share": args.photo_share, "k": args.k, "repeats": args.repeats,
        "server": args.url or f"vislang serve --index {args.index}" + (f" --max-batch {args.max_batch}" if args.max_batch else ""),
        "index_items": before["items"] if before else None,
        # medians over the repeats
        **{key: statistics.median(r[key] for r in repeats) for key in ("p50_ms", "p99_ms", "mean_ms", "rps")},
        "errors": sum(r["errors"] for r in repeats), "requests": sum(r["requests"] for r in repeats),
        "search_batches": {size: count - (before or {}).get("search_batches", {}).get(size, 0)
                           for size, count in (after or {}).get("search_batches", {}).items()},
        "per_repeat": repeats,
    }
    if hostile is not None:
        result["hostile"] = hostile
        result["hostile_all_refused_and_answering"] = all(h["ok"] and h["search_after"] for h in hostile)
    if not args.json:
        print(f"{result['requests']} requests, {result['errors']} errors; median of {args.repeats} repeats: "
              f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, {result['rps']} requests/s")
        for h in hostile or []:
            print(f"  {h['request']}: {h['status']} {h['error']!r} (search after: {'ok' if h['search_after'] else 'FAILED'})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
