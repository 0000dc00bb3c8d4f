"""Shared fixtures: a tiny catalog generated on the fly (no real data needed), and offline settings."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
SHAPES = ["chair", "lamp", "table", "bed"]


def _draw(shape: str, colour: tuple[int, int, int], size: int = 48, seed: int = 0) -> Image.Image:
    """A coloured shape on white: simple enough that a tiny model can learn colour and shape."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size, 3), 255, np.uint8)
    jitter = rng.integers(-3, 4, size=2)
    c = size // 2 + jitter
    r = size // 4
    yy, xx = np.mgrid[:size, :size]
    masks = {
        "chair": (abs(yy - c[0]) < r) & (abs(xx - c[1]) < r // 3),
        "lamp": (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r**2,
        "table": (abs(yy - c[0]) < r // 3) & (abs(xx - c[1]) < r),
        "bed": (abs(yy - c[0]) < r) & (abs(xx - c[1]) < r),
    }
    pixels[masks[shape]] = colour
    return Image.fromarray(pixels)


def make_catalog(root: Path, per_cell: int = 3, size: int = 48) -> Path:
    """Write a tiny catalog in the IKEA layout: coloured-shape products, and rooms that contain them.
    `size`: the products' side in pixels (rooms in proportion); larger only where people look at them."""
    (root / "images" / "products").mkdir(parents=True, exist_ok=True)
    (root / "images" / "rooms").mkdir(parents=True, exist_ok=True)
    products, n = [], 0
    for shape in SHAPES:
        for name, rgb in COLOURS.items():
            for k in range(per_cell):
                pid = f"{n:03d}.000.00"
                _draw(shape, rgb, size, seed=n).save(root / "images" / "products" / f"{pid}.jpg")
                split = ("train", "train", "val", "test")[n % 4] if k else "train"
                products.append({"id": pid, "name": f"ITEM{n}", "type": shape.title(), "color": name.title(),
                                 "size": "", "description": f"A {name} {shape}.", "category": None,
                                 "image": f"images/products/{pid}.jpg", "split": split})
                n += 1
    rooms = []
    for i, shape in enumerate(SHAPES * 2):
        rid = f"room{i:02d}"
        scale = size / 48
        img = Image.new("RGB", (round(64 * scale), size), (240, 230, 220))
        img.paste(_draw(shape, COLOURS["red"], round(32 * scale), seed=i), (round(16 * scale), round(8 * scale)))
        img.save(root / "images" / "rooms" / f"{rid}.jpg")
        linked = [p["id"] for p in products if p["type"].lower() == shape][:3]
        rooms.append({"id": rid, "title": f"a room with a {shape}", "category": ["Bedroom", "Kitchen"][i % 2],
                      "image": f"images/rooms/{rid}.jpg", "item_types": [shape], "product_ids": linked,
                      "split": ("train", "train", "val", "test")[i % 4]})
    for name, rows in (("products.jsonl", products), ("rooms.jsonl", rooms)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("catalog"))


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the tiny config's model as built, not trained (no heads): what tests of
    saving, loading and searching need, without the cost of a training run."""
    import torch

    from vislang.checkpoint import save_checkpoint
    from vislang.config import load_config
    from vislang.models import create_model

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
                         ["model.matching.enabled=false", "model.decoder.enabled=false"])
    torch.manual_seed(0)
    model, tokenizer = create_model(config["model"])
    return save_checkpoint(tmp_path_factory.mktemp("untrained"), 1, model, tokenizer, config)


@pytest.fixture
def one_thread():
    """Tiny tensors: with several threads, synchronisation costs more than the maths (5-10x slower
    on a busy machine). Restored afterwards so other tests are unaffected."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISLANG_CACHE", str(tmp_path / "cache"))



TINY_TRAINING = ["model.image.image_size=32", "train.batch_size=12", "train.epochs=2", "train.checkpoint_every=100"]


def train_tiny(catalog: Path, output: Path, *overrides: str) -> Path:
    """A model of configs/tiny.yaml (a matching head and a caption decoder unless overridden),
    trained on `catalog` in seconds; its final checkpoint."""
    import torch

    from vislang.config import load_config
    from vislang.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        config = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", [*TINY_TRAINING, *overrides])
        return train(config, data=str(catalog), output=output)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_catalog, tmp_path_factory) -> Path:
    """The tiny catalog's model, with both heads, trained once per session."""
    return train_tiny(tiny_catalog, tmp_path_factory.mktemp("tiny-model") / "run")


@contextmanager
def live_server(app) -> Iterator[str]:
    """`app` under uvicorn, as `vislang serve` runs it, on a free loopback port: yields its base URL."""
    import socket
    import threading

    import uvicorn

    from vislang.serve.run import uvicorn_options

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(host, port), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "the server did not start in 30 s"
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
