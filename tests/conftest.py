"""Shared fixtures: a tiny catalog generated on the fly (no real data needed), and offline settings."""
from __future__ import annotations

import json
import os
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


def make_catalog(root: Path, per_cell: int = 3) -> Path:
    """Write a tiny catalog in the IKEA layout: coloured-shape products, and rooms that contain them."""
    (root / "images" / "products").mkdir(parents=True, exist_ok=True)
    (root / "images" / "rooms").mkdir(parents=True, exist_ok=True)
    products, n = [], 0
    for shape in SHAPES:
        for name, rgb in COLOURS.items():
            for k in range(per_cell):
                pid = f"{n:03d}.000.00"
                _draw(shape, rgb, seed=n).save(root / "images" / "products" / f"{pid}.jpg")
                split = ("train", "train", "val", "test")[n % 4] if k else "train"
                products.append({"id": pid, "name": f"ITEM{n}", "type": shape.title(), "color": name.title(),
                                 "size": "", "description": f"A {name} {shape}.", "category": None,
                                 "image": f"images/products/{pid}.jpg", "split": split})
                n += 1
    rooms = []
    for i, shape in enumerate(SHAPES * 2):
        rid = f"room{i:02d}"
        img = Image.new("RGB", (64, 48), (240, 230, 220))
        img.paste(_draw(shape, COLOURS["red"], 32, seed=i), (16, 8))
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

