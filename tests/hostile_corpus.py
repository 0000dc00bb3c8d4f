"""A hostile-input corpus, generated (nothing binary is committed): broken and odd image files,
and catalogs and manifests that name them beside good items, with broken rows of their own.

    python tests/hostile_corpus.py OUT            # OUT/catalog (IKEA layout) and OUT/manifest.jsonl

Every command must either skip a bad item with a counted warning or stop with one clear message;
`HOSTILE_FILES` says which files are usable (odd but valid images, which must be kept) and which
are not (which must be skipped), and `BAD_ROWS` how many rows each reader must skip.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_catalog  # noqa: E402  (the tiny good catalog the tests train on)

LONG_CAPTION = ("a very long caption about an oak chair " * 2600)[:100_000]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(side: int = 30000) -> bytes:
    """A PNG whose header declares side x side RGB pixels (2.7 GB decoded) in a few hundred bytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" * (1 + 3 * side))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", row) + _png_chunk(b"IEND", b"")


def _noise(size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)


def _jpeg_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_noise(seed=seed)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_hostile_files(folder: Path) -> dict[str, bool]:
    """Write every hostile file into `folder`; returns file name -> whether it is a usable image."""
    folder.mkdir(parents=True, exist_ok=True)
    usable: dict[str, bool] = {}

    def write(name: str, data: bytes, ok: bool) -> None:
        (folder / name).write_bytes(data)
        usable[name] = ok

    whole = _jpeg_bytes(1)
    write("truncated.jpg", whole[: len(whole) // 2], False)
    write("zero-bytes.jpg", b"", False)
    write("bomb-30000x30000.png", _bomb_png(), False)
    write("text-named.jpg", "this is a text file, not a photo\n".encode(), False)
    write("html-error-page.jpg", b"<html><body>503 Service Unavailable</body></html>", False)
    # odd but valid images: they must be read, as RGB
    Image.new("CMYK", (40, 32), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    usable["cmyk.jpg"] = True
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)).save(folder / "sixteen-bit.png")
    usable["sixteen-bit.png"] = True
    Image.fromarray(_noise(seed=2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    usable["palette.png"] = True
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    usable["animated.gif"] = True
    # not files at all
    os.symlink("loop-b.jpg", folder / "loop-a.jpg")
    os.symlink("loop-a.jpg", folder / "loop-b.jpg")
    usable["loop-a.jpg"] = False
    os.symlink("nowhere.jpg", folder / "dangling.jpg")
    usable["dangling.jpg"] = False
    (folder / "folder.jpg").mkdir()
    usable["folder.jpg"] = False
    return usable


HOSTILE_FILES = ("truncated.jpg", "zero-bytes.jpg", "bomb-30000x30000.png", "text-named.jpg", "html-error-page.jpg",
                 "cmyk.jpg", "sixteen-bit.png", "palette.png", "animated.gif", "loop-a.jpg", "dangling.jpg", "folder.jpg")
# files that exist as regular files but cannot be decoded: the catalog keeps their rows, every
# command that reads pixels skips them with a counted warning
UNDECODABLE = ("truncated.jpg", "zero-bytes.jpg", "bomb-30000x30000.png", "text-named.jpg", "html-error-page.jpg")
# names that are not regular files: the catalog reader skips their rows
NOT_FILES = ("loop-a.jpg", "dangling.jpg", "folder.jpg")
USABLE = ("cmyk.jpg", "sixteen-bit.png", "palette.png", "animated.gif")


def _product(pid: str, image: str, split: str = "train", **fields) -> dict:
    row = {"id": pid, "name": f"HOSTILE {pid}", "type": "Chair", "color": "Black", "size": "", "description": "",
           "category": None, "image": image, "split": split}
    row.update(fields)
    return row


def make_hostile_catalog(root: Path) -> Path:
    """The tiny good catalog (tests/conftest.py) in the IKEA layout, plus a product per hostile file,
    split over train, val and test, and broken rows of every kind in products.jsonl and rooms.jsonl."""
    make_catalog(root)
    write_hostile_files(root / "images" / "hostile")
    splits = ("train", "val", "test")
    products = [_product(f"h{i:02d}", f"images/hostile/{name}", splits[i % 3]) for i, name in enumerate(HOSTILE_FILES)]
    products += [
        _product("h-long", "images/products/000.000.00.jpg", description=LONG_CAPTION, name=LONG_CAPTION),  # kept
        _product("h-empty", "images/products/001.000.00.jpg", name="", type="", color=""),  # no caption
        _product("000.000.00", "images/products/002.000.00.jpg"),  # a duplicate id
        _product("h-nosplit", "images/products/003.000.00.jpg", split="holdout"),
        _product("h-escape", "../../../../etc/passwd-not-here.jpg"),
        _product("h-nul", "images/products/a\u0000b.jpg"),
        _product("h-long-name", "images/" + "x" * 5000 + ".jpg"),
        {"id": "h-noimage", "name": "NO IMAGE", "type": "Chair", "split": "train"},
        {"id": "h-badtypes", "name": 5, "type": ["Chair"], "image": 7, "split": "train"},
    ]
    lines = [json.dumps(row).encode() for row in products]
    lines += [b'{"id": "h-torn", "name": "TORN", "ima', b"\xff\xfe not utf-8 \xc3\x28", b"[1, 2, 3]", b"null",
              b"[" * 5000 + b"]" * 5000]
    with open(root / "products.jsonl", "ab") as handle:
        handle.write(b"\n".join(lines) + b"\n")
    rooms = [
        {"id": "hroom-ghosts", "title": "a room of products that are not there", "category": "Bedroom",
         "image": "images/rooms/room00.jpg", "item_types": ["bed"], "product_ids": ["404.404.04", "405.405.05"],
         "split": "train"},
        {"id": "hroom-broken", "title": "a room whose photo is broken", "category": "Kitchen",
         "image": "images/hostile/truncated.jpg", "item_types": [], "product_ids": ["000.000.00"], "split": "test"},
        {"id": "hroom-links-string", "title": "links as a string", "category": "Kitchen",
         "image": "images/rooms/room01.jpg", "product_ids": "000.000.00", "split": "train"},
    ]
    with open(root / "rooms.jsonl", "ab") as handle:
        handle.write(b"\n".join(json.dumps(r).encode() for r in rooms) + b"\n\xc3\x28\n")
    return root


# Rows each reader skips. products.jsonl: the rows naming what is not a file, 8 bad rows (no
# caption, a duplicate id, an unknown split, a path out of the folder, a NUL in the path, a name
# too long, no image field, fields of the wrong type) and 5 lines that are not JSON objects;
# rooms.jsonl: links given as a string and a line that is not UTF-8.
# manifest.jsonl: the rows naming what is not a file, 4 bad rows (no caption, a duplicate id, no
# image field, a NUL in the path) and 4 lines that are not JSON objects with an image.
BAD_ROWS = {"catalog": len(NOT_FILES) + 8 + 5 + 2, "manifest": len(NOT_FILES) + 4 + 4}


def make_hostile_manifest(folder: Path) -> Path:
    """A JSONL manifest in `folder`: good coloured squares, a row per hostile file, and broken lines."""
    write_hostile_files(folder / "hostile")
    rows = []
    for i, (name, rgb) in enumerate({"red": (220, 20, 20), "green": (20, 180, 40), "blue": (20, 40, 220)}.items()):
        for k in range(4):
            Image.new("RGB", (32, 32), rgb).save(folder / f"{name}{k}.jpg")
            rows.append({"id": f"{name}{k}", "image": f"{name}{k}.jpg", "caption": f"a {name} square",
                         "split": ("train", "train", "val", "test")[k]})
    splits = ("train", "val", "test")
    rows += [{"id": f"h{i:02d}", "image": f"hostile/{name}", "caption": f"hostile {name}", "split": splits[i % 3]}
             for i, name in enumerate(HOSTILE_FILES)]
    rows += [
        {"id": "h-long", "image": "red0.jpg", "caption": LONG_CAPTION},  # kept
        {"id": "h-empty", "image": "red1.jpg", "caption": ""},
        {"id": "red0", "image": "red2.jpg", "caption": "a duplicate id"},
        {"id": "h-noimage", "caption": "no image field"},
        {"id": "h-nul", "image": "a\u0000b.jpg", "caption": "NUL in the path"},
    ]
    lines = [json.dumps(row).encode() for row in rows]
    lines += [b'{"image": "red0.jpg", "caption": "torn', b"\xff\xfe\xfd not utf-8", b'"just a string"',
              b"{" * 3000]
    path = folder / "manifest.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="folder to create")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=False)
    make_hostile_catalog(args.output / "catalog")
    manifest = make_hostile_manifest(args.output / "manifest")
    print(f"{args.output / 'catalog'} (IKEA layout) and {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
