"""Catalog records: every image with its texts, read from the IKEA layout or a user manifest.

An `Item` is one image and the texts that describe it. `texts[0]` is the item's caption: the
string used as its retrieval query and caption target. Rooms carry `links`, the ids of the
products that appear in them, which training may use as extra positive pairs.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

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

    def without_images(self, images: set[Path]) -> "Catalog":
        """The catalog less the items whose image is one of `images` (found unreadable); rooms keep
        their links, which readers ignore when the product is not there."""
        return Catalog([item for item in self.items if item.image not in images], self.root, self.problems)

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
    category, item_types = row.get("category") or "", _list(row, "item_types")
    texts = [row.get("title") or "", room_sentence(category, item_types), category_prompt(category) if category else ""]
    meta = {"title": row.get("title"), "category": category, "item_types": item_types}
    links = tuple(str(p) for p in _list(row, "product_ids"))
    return Item(str(row["id"]), "room", root / row["image"], _unique(texts), row["split"], links, meta)


def _list(row: dict[str, Any], key: str) -> list:
    """A list field of a row (absent or null: empty); anything else makes the row unreadable."""
    value = row.get(key) or []
    if not isinstance(value, list):
        raise TypeError(f"{key} must be a list, got {type(value).__name__}")
    return value


# What a hostile row can raise while it is parsed and turned into an Item: each makes it one
# skipped row (RecursionError: JSON nested thousands deep).
ROW_ERRORS = (ValueError, KeyError, TypeError, AttributeError, RecursionError)


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or the exception that line raised) for every non-blank line; a
    line that is not UTF-8 is an error of its own, not the end of the file."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield number, ValueError(f"not UTF-8: {err.reason} at byte {err.start}")
            except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
                yield number, ValueError(f"not JSON: {type(err).__name__}: {str(err)[:80]}")


def _read_jsonl(path: Path, build: Callable[[dict[str, Any], Path], Item], root: Path, problems: list[str],
                ids: dict[str, str]) -> list[Item]:
    items = []
    for number, row in _json_lines(path):
        where = f"{path.name}:{number}"
        if isinstance(row, Exception):
            problems.append(f"{where}: {row}")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: not a JSON object: a {type(row).__name__}")
            continue
        try:
            item = build(row, root)
        except ROW_ERRORS as err:
            problems.append(f"{where}: bad fields: {type(err).__name__}: {str(err)[:200]}")
            continue
        _keep(item, where, items, problems, ids)
    return items


def _keep(item: Item, where: str, items: list[Item], problems: list[str], ids: dict[str, str]) -> None:
    """Append `item` unless it has a problem (counted in `problems`); `ids`: id -> where it was first seen."""
    problem = _check(item) or (f"duplicate id: {item.id!r} (first at {ids[item.id]})" if item.id in ids else None)
    if problem:
        problems.append(f"{where}: {problem}")
    else:
        ids[item.id] = where
        items.append(item)


def _check(item: Item) -> str | None:
    """What is wrong with an item, as "REASON: details" (None: nothing)."""
    if not item.texts or not item.caption:
        return f"no caption: {item.id}"
    if item.split not in SPLITS:
        return f"unknown split: {item.id} has {item.split[:40]!r}"
    try:
        regular = item.image.is_file()  # False for a folder, a pipe, a link to nowhere or a link loop
    except (OSError, ValueError) as err:  # a name too long, a NUL byte in it
        return f"image path unusable: {item.id} ({err.__class__.__name__}: {str(err)[:80]})"
    if not regular:
        return f"image missing or not a file: {item.id} ({str(item.image)[:200]})"
    return None


def _warn(problems: list[str], source: Path) -> None:
    """One warning: how many rows were skipped, how many for each reason, and the first in full.
    A problem reads "WHERE: REASON: details"."""
    if problems:
        reasons = Counter(problem.split(": ")[1] for problem in problems)
        why = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        warnings.warn(f"{source}: skipped {len(problems)} rows ({why}); first: {problems[0]}", stacklevel=3)


def _without_dangling_links(items: list[Item], source: Path) -> list[Item]:
    """Rooms keep only the links to products the catalog holds; the others are counted in one warning."""
    known = {item.id for item in items}
    dangling = sum(1 for item in items for link in item.links if link not in known)
    if not dangling:
        return items
    rooms = sum(1 for item in items if any(link not in known for link in item.links))
    warnings.warn(f"{source}: {rooms} room(s) name {dangling} product(s) that are not in the catalog; those links "
                  "are ignored", stacklevel=3)
    return [dataclasses.replace(item, links=tuple(link for link in item.links if link in known)) if item.links
            else item for item in items]


def read_ikea(root: str | Path) -> Catalog:
    """Read products.jsonl and rooms.jsonl of the IKEA layout; bad rows (not UTF-8, not JSON,
    missing fields or image, no caption, a duplicate id) are skipped and counted, and links to
    products that are not there dropped."""
    root = Path(root)
    problems: list[str] = []
    items: list[Item] = []
    ids: dict[str, str] = {}
    for name, build in (("products.jsonl", _product_item), ("rooms.jsonl", _room_item)):
        if (root / name).is_file():
            items += _read_jsonl(root / name, build, root, problems, ids)
    _warn(problems, root)
    return Catalog(_without_dangling_links(items, root), root, problems)


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, the row as a dict, or the exception reading it raised)."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")  # a bad byte spoils its row, not the file
    reader = csv.DictReader(io.StringIO(text, newline=""))
    number = 1
    while True:
        number += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield number, ValueError(f"not CSV: {err}")
            continue
        values = [v for v in row.values() if isinstance(v, str)] + [k for k in row if isinstance(k, str)]
        if any(_is_undecodable(v) for v in values):
            yield number, ValueError("not UTF-8: a byte that is not")
        else:
            yield number, row


def _is_undecodable(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _manifest_texts(row: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for key, value in row.items():
        if not isinstance(key, str) or not (key.startswith("caption") or key.startswith("text")):
            continue  # (csv gives the cells beyond the header under the key None)
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
    ids: dict[str, str] = {}
    rows = list(_csv_rows(path) if path.suffix.lower() == ".csv" else _json_lines(path))
    if rows and all(isinstance(row, Exception) for _, row in rows):  # a file of another format, most likely
        raise ManifestError(f"{path}: not a valid manifest (no row could be read; line {rows[0][0]}: {rows[0][1]})")
    for number, row in rows:
        where = f"{path.name}:{number}"
        if isinstance(row, Exception):
            problems.append(f"{where}: {row}")
            continue
        if not isinstance(row, dict) or not row.get("image"):
            problems.append(f"{where}: no image field: {str(row)[:80]}")
            continue
        try:
            item = Item(
                str(row.get("id") or f"row{number}"),
                str(row.get("kind") or "image"),
                root / str(row["image"]),
                _unique(_manifest_texts(row)),
                str(row.get("split") or "train"),
            )
        except ROW_ERRORS as err:
            problems.append(f"{where}: bad fields: {type(err).__name__}: {str(err)[:200]}")
            continue
        _keep(item, where, items, problems, ids)
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
