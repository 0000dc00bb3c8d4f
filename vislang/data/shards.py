"""A catalog as webdataset tar shards: resized images, their texts, and a manifest.

`write_shards` turns any catalog (IKEA folder or manifest) into `shard-NNNNNN.tar` files written
with the `webdataset` package (one sample per image: `KEY.jpg` and `KEY.json`) and a
`manifest.json`. `read_shards` gives the catalog back; its images are addressed inside the
shards (`shard-000000.tar/KEY.jpg`), which `load_image` reads directly, so training and
evaluation run on shards exactly as on the folder.

Images no larger than `max_side` are stored byte for byte (the same pixels as the folder);
larger ones are shrunk to `max_side` and stored as JPEG.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from ..atomic import atomic_folder, fault_point
from .catalog import Catalog, Item
from .images import ImageLoadError, SkipCounter, load_image

FORMAT = "vislang-shards"
MANIFEST = "manifest.json"
JPEG_QUALITY = 90


class ShardError(ValueError):
    """A shard folder is missing, incomplete or not vislang's format."""


def is_shard_folder(path: Path) -> bool:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _key(item_id: str, taken: set[str]) -> str:
    # webdataset splits a member name at its first dot: keys must not contain one
    key = re.sub(r"[^A-Za-z0-9_-]", "_", item_id) or "item"
    while key in taken:
        key += "_"
    taken.add(key)
    return key


def _image_bytes(item: Item, max_side: int) -> tuple[bytes, str]:
    """The image as stored in the shard, and its extension."""
    image = load_image(item.image)  # raises ImageLoadError for unreadable files
    if max(image.size) <= max_side:
        suffix = item.image.suffix.lower().lstrip(".")
        return item.image.read_bytes(), ("jpg" if suffix == "jpeg" else suffix)
    image.thumbnail((max_side, max_side), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), "jpg"


def _record(item: Item) -> dict:
    record = asdict(item)
    record["image"] = item.image.name
    return record


def write_shards(catalog: Catalog, output: Path, max_side: int = 384, shard_size: int = 1000) -> Path:
    """Write `catalog` as shards in `output` (a new folder; written beside it, then renamed into
    place: an interrupted run leaves no `output`, only a temporary the next run removes)."""
    import webdataset as wds

    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} already exists; choose a new --output folder")
    if max_side < 16 or shard_size < 1:
        raise ShardError("--max-side must be at least 16 and --shard-size at least 1")
    skipped, taken, counts = SkipCounter(), set(), {}
    try:
        with atomic_folder(output, "shards") as partial:
            with wds.ShardWriter(str(partial / "shard-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
                for item in tqdm(catalog.items, desc="writing shards", unit="img", mininterval=1.0):
                    try:
                        data, extension = _image_bytes(item, max_side)
                    except (ImageLoadError, OSError) as err:
                        skipped.add(err if isinstance(err, ImageLoadError) else ImageLoadError(f"not readable: {err}"))
                        continue
                    sink.write({"__key__": _key(item.id, taken), extension: data, "json": _record(item)})
                    counts[f"{item.split}/{item.kind}"] = counts.get(f"{item.split}/{item.kind}", 0) + 1
            skipped.warn()
            if not counts:
                raise ShardError(f"nothing written: none of the catalog's {len(catalog)} images could be read")
            shards = sorted(p.name for p in partial.glob("shard-*.tar"))
            manifest = {"format": FORMAT, "version": 1, "shards": shards, "count": sum(counts.values()),
                        "counts": counts, "max_side": max_side, "source": str(catalog.root)}
            fault_point("manifest", partial / MANIFEST)  # the shards written, their manifest not yet
            (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    except NotADirectoryError as err:  # its message would name the hidden temporary folder
        raise NotADirectoryError(f"cannot create {output}: part of its path is a file, not a folder") from err
    return output


def read_shard_manifest(folder: Path) -> dict[str, Any]:
    """A shard folder's manifest: its shard files and how many images of each split and kind they hold."""
    return json.loads((Path(folder) / MANIFEST).read_text())


def read_shards(folder: Path) -> Catalog:
    """The catalog stored in a shard folder; image paths point inside its shards."""
    import tarfile

    folder = Path(folder)
    if not is_shard_folder(folder):
        raise ShardError(f"{folder} is not a vislang shard folder (no {MANIFEST} of format {FORMAT!r})")
    manifest = read_shard_manifest(folder)
    items: list[Item] = []
    for name in manifest["shards"]:
        shard = folder / name
        if not shard.is_file():
            raise ShardError(f"{shard} is listed in {folder / MANIFEST} but missing; prepare the shards again")
        try:
            with tarfile.open(shard) as tar:
                members = [m for m in tar if m.isfile()]
                images = {m.name.partition(".")[0]: m.name for m in members if not m.name.endswith(".json")}
                for member in members:
                    key, _, extension = member.name.partition(".")
                    if extension != "json":
                        continue
                    record = json.loads(tar.extractfile(member).read())
                    record.update(image=shard / images[key], texts=tuple(record["texts"]), links=tuple(record["links"]))
                    items.append(Item(**record))
        except (tarfile.TarError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ShardError(f"{shard} is damaged ({type(err).__name__}: {err}); prepare the shards again") from err
    return Catalog(items, folder)
