"""Catalog records: every image with its texts, read from the IKEA layout or a user manifest.

An `Item` is one image and the texts that describe it. `texts[0]` is the item's caption: the
string used as its retrieval query and caption target. Rooms carry `links`, the ids of the
products that appear in them, which training may use as extra positive pairs.
"""
from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A catalog that cannot be read or trained on: shown to the user as one line."""


@dataclass(frozen=True)
class Item:
    id: str
    kind: str  # "product", "room", or "image" for manifest rows
    image: Path
    texts: tuple[str, ...]
    split: str
    links: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def caption(self) -> str:
        return self.texts[0]


@dataclass
class Catalog:
    items: list[Item]
    root: Path
    problems: list[str] = field(default_factory=list)  # rows skipped while reading, one line each

    def __post_init__(self) -> None:
        self._by_id = {item.id: item for item in self.items}

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def get(self, item_id: str) -> Item | None:
        return self._by_id.get(item_id)

    def select(self, split: str | None = None, kind: str | None = None) -> list[Item]:
        return [
            item
            for item in self.items
            if (split is None or item.split == split) and (kind is None or item.kind == kind)
        ]


def product_caption(name: str, type_: str, color: str) -> str:
    """The catalog caption "{name} {type}, {color}"; the colour part is left out when empty."""
    head = f"{name} {type_}".strip()
    return f"{head}, {color}" if color else head


def room_sentence(category: str, item_types: list[str], limit: int = 8) -> str:
    """A sentence from a room's category and the kinds of product listed in it."""
    unique = list(dict.fromkeys(t.strip().lower() for t in item_types if t.strip()))[:limit]
    place = f"a {category.lower()}" if category else "a room"
    return f"{place} with {', '.join(unique)}" if unique else place


def category_prompt(category: str) -> str:
    """The prompt a room photo is classified with ("a photo of a kitchen"), which a room also trains on:
    users search by kind of room, and `vislang eval`'s room_category_acc asks the same question."""
    return f"a photo of a {category.lower()}"


def _unique(texts: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def _product_item(row: dict[str, Any], root: Path) -> Item:
    name, type_, color = row.get("name") or "", row.get("type") or "", row.get("color") or ""
    size, description = row.get("size") or "", row.get("description") or ""
    texts = [product_caption(name, type_, color), description, type_]
    if size and type_:
        texts.append(f"{type_}, {size}")
    meta = {k: row.get(k) for k in ("name", "type", "color", "size", "description", "category")}
    return Item(str(row["id"]), "product", root / row["image"], _unique(texts), row["split"], (), meta)


def _room_item(row: dict[str, Any], root: Path) -> Item:
    category, item_types = row.get("category") or "", list(row.get("item_types") or [])
    texts = [row.get("title") or "", room_sentence(category, item_types), category_prompt(category) if category else ""]
    meta = {"title": row.get("title"), "category": category, "item_types": item_types}
    links = tuple(str(p) for p in row.get("product_ids") or [])
    return Item(str(row["id"]), "room", root / row["image"], _unique(texts), row["split"], links, meta)


def _read_jsonl(path: Path, build, root: Path, problems: list[str]) -> list[Item]:
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                row = json.loads(line)
                item = build(row, root)
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                problems.append(f"{where}: unreadable row ({type(err).__name__}: {err})")
                continue
            problem = _check(item)
            if problem:
                problems.append(f"{where}: {problem}")
            else:
                items.append(item)
    return items


def _check(item: Item) -> str | None:
    if not item.texts or not item.caption:
        return f"{item.id} has no caption"
    if item.split not in SPLITS:
        return f"{item.id} has unknown split {item.split!r}"
    if not item.image.is_file():
        return f"{item.id} image missing: {item.image}"
    return None


def _warn(problems: list[str], source: Path) -> None:
    if problems:
        warnings.warn(f"{source}: skipped {len(problems)} rows; first: {problems[0]}", stacklevel=3)


def read_ikea(root: str | Path) -> Catalog:
    """Read products.jsonl and rooms.jsonl of the IKEA layout; bad rows are skipped and counted."""
    root = Path(root)
    problems: list[str] = []
    items: list[Item] = []
    for name, build in (("products.jsonl", _product_item), ("rooms.jsonl", _room_item)):
        if (root / name).is_file():
            items += _read_jsonl(root / name, build, root, problems)
    _warn(problems, root)
    return Catalog(items, root, problems)


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".csv":
            for number, row in enumerate(csv.DictReader(handle), 2):
                yield number, row
            return
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, json.loads(line)


def _manifest_texts(row: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for key, value in row.items():
        if not (key.startswith("caption") or key.startswith("text")):
            continue
        if isinstance(value, list):
            texts += [str(v) for v in value]
        elif value:
            texts += str(value).split("|") if key in ("captions", "texts") else [str(value)]
    return texts


def read_manifest(path: str | Path) -> Catalog:
    """Read a user's JSONL or CSV manifest: an `image` path plus one or more captions per row.

    Captions come from any field whose name starts with "caption" or "text" (a JSON list, or in
    CSV a "captions" column with "|" between captions). Optional fields: `id`, `split` (default
    "train"), `kind`. Relative image paths are taken from the manifest's folder.
    """
    path = Path(path)
    root = path.parent
    problems: list[str] = []
    items: list[Item] = []
    try:
        rows = list(_manifest_rows(path))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"{path}: not a valid manifest ({err})") from err
    for number, row in rows:
        where = f"{path.name}:{number}"
        if not isinstance(row, dict) or not row.get("image"):
            problems.append(f"{where}: no image field")
            continue
        item = Item(
            str(row.get("id") or f"row{number}"),
            str(row.get("kind") or "image"),
            root / str(row["image"]),
            _unique(_manifest_texts(row)),
            str(row.get("split") or "train"),
        )
        problem = _check(item)
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            items.append(item)
    _warn(problems, path)
    return Catalog(items, root, problems)


def read_catalog(location: str | Path) -> Catalog:
    """Read a catalog folder (IKEA layout), a manifest file or a shard folder, whichever `location` is."""
    from .shards import is_shard_folder, read_shards  # shards build on this module

    location = Path(location)
    if location.is_file():
        catalog = read_manifest(location)
    elif is_shard_folder(location):
        catalog = read_shards(location)
    else:
        catalog = read_ikea(location)
    if not catalog.items:  # every command needs images: stop here rather than with empty results
        skipped = f" ({len(catalog.problems)} rows skipped; first: {catalog.problems[0]})" if catalog.problems else ""
        raise ManifestError(f"{location}: the catalog holds no usable images{skipped}")
    return catalog
