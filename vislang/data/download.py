"""Download the IKEA catalog dataset and convert it to the project's layout.

Source: the public GitHub repository ``IvonaTau/ikea`` (Tautkute et al., "What
Looks Good with my Sofa", FedCSIS 2017). Its layout::

    images/objects/<article>.jpg          product photos without a coarse label
    images/<category>/<article|imgN>.jpg  bed, chair, clock, couch, dining table, plant pot
    images/room_scenes/ikea-<title-slug>__<timestamp>-s4.jpg   room photos
    text_data/products_dict.p      {article: {"name", "type", "color", "size", "desc", "img"}}
    text_data/item_to_room.p       {"images/<article>.jpg": ["images/room_scenes/<file>", ...]}
    text_data/room_to_items.p      {<room file>: ["sofa", "rug, flatwoven", ...]}
    text_data/categories_dict.p    {<room file>: "Living Room"}
    text_data/img_to_desc.p        {".../<article>.jpg": {"name", "desc"}}   (fallback text)
    text_data/categories_images_dict.p  {article: "Footstool"}               (fallback type)

``convert_ikea`` turns that into ``products.jsonl``, ``rooms.jsonl`` and
``images/{products,rooms}/<id>.jpg`` -- the layout of the shared copy the rest of
the package reads. The pickles are read with ``safe_load``, never ``pickle.load``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vislang.atomic import atomic_folder, remove_stale_temporaries, temporary_name
from vislang.data.locate import downloaded_ikea_dir
from vislang.data.safe_pickle import safe_load

__all__ = [
    "DEFAULT_URL",
    "DownloadError",
    "SourceLayoutError",
    "download_ikea",
    "convert_ikea",
    "room_title",
    "room_id",
    "assign_splits",
]

DEFAULT_URL = "https://github.com/IvonaTau/ikea/archive/refs/heads/master.zip"
URL_ENV_VAR = "VISLANG_IKEA_URL"  # another address of the same archive (a mirror)
# the public repository converts to 2292 products and 215 rooms; a download with far fewer is not it
MINIMUM_COUNTS = {"products": 2000, "rooms": 200}
PROVENANCE = "download.json"
SOCKET_TIMEOUT_S = 20.0
SPLIT_FRACTIONS: tuple[tuple[str, float], ...] = (("train", 0.75), ("val", 0.10), ("test", 0.15))

TEXT_DIR = "text_data"
IMAGES_DIR = "images"
ROOMS_SUBDIR = "room_scenes"
UNLABELLED_SUBDIR = "objects"
PRODUCTS_PICKLE = "products_dict.p"
ITEM_TO_ROOM_PICKLE = "item_to_room.p"
ROOM_ITEMS_PICKLE = "room_to_items.p"
ROOM_CATEGORIES_PICKLE = "categories_dict.p"
IMG_TO_DESC_PICKLE = "img_to_desc.p"
ITEM_TYPES_PICKLE = "categories_images_dict.p"

_DESC_BOILERPLATE = "View more product information"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The dataset archive could not be fetched or unpacked."""


class SourceLayoutError(ValueError):
    """The source folder is not laid out like the ``IvonaTau/ikea`` repository."""


# --------------------------------------------------------------------------- download


def download_ikea(dest: Path | None = None, *, seed: int = 0, url: str | None = None,
                  minimum: Mapping[str, int] | None = None) -> Path:
    """Download ``IvonaTau/ikea``, verify it, convert it, and place the result at ``dest``
    (default: the cache folder, ``locate.downloaded_ikea_dir()``, where vislang looks for it).

    The archive is fetched with a progress bar, checked against its Content-Length and its zip
    CRCs, converted, and the conversion checked: at least ``minimum`` products and rooms (by
    default, for the public repository, most of its 2292 and 215), every image decodable (an
    unreadable one is left out with a counted warning, as any catalog's). ``dest`` appears only
    once all of that succeeded (it is written under a temporary name and renamed), with a
    ``download.json`` recording the source, the archive's sha256 and the counts: a failure or a
    kill never leaves a partial dataset. Raises ``DownloadError`` when the archive cannot be
    fetched or fails verification (offline: a message saying how to get the data) and
    ``FileExistsError`` when ``dest`` is a non-empty folder.
    """
    dest = Path(dest) if dest is not None else downloaded_ikea_dir()
    url = url or os.environ.get(URL_ENV_VAR) or DEFAULT_URL
    minimum = MINIMUM_COUNTS if minimum is None and url == DEFAULT_URL else (minimum or {})
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} already exists and is not empty; not overwriting it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the archive and its unpacked source, beside `dest` and never published; a killed run's are
    # removed by the next one (vislang/atomic.py)
    work_name = f"{dest.name}-download"
    remove_stale_temporaries(dest.parent, work_name)
    work = temporary_name(dest.parent / work_name)
    try:
        with atomic_folder(dest, "download") as staging:
            work.mkdir()
            digest = _fetch(url, work / "ikea.zip")
            src = _extract(work / "ikea.zip", work / "src", url)
            counts = convert_ikea(src, staging, seed=seed)
            unreadable = _verify(staging, counts, minimum, url)
            provenance = {"source": url, "archive_sha256": digest, "seed": seed, "counts": counts,
                          "unreadable_images": unreadable, "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (staging / PROVENANCE).write_text(json.dumps(provenance, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _fetch(url: str, out: Path) -> str:
    """Download `url` into `out` with a progress bar; returns its sha256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=SOCKET_TIMEOUT_S) as resp, out.open("wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc="IKEA dataset") as bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise DownloadError(_download_failed(url, getattr(exc, "reason", None) or exc)) from exc
    if total is not None and received != total:
        raise DownloadError(_download_failed(url, f"the connection ended after {received} of {total} bytes"))
    return digest.hexdigest()


def _download_failed(url: str, reason: object) -> str:
    return (
        f"IKEA dataset download failed ({url}: {reason}). "
        "If this machine is offline, get a converted copy of the dataset (the folder "
        "with products.jsonl, rooms.jsonl and images/) some other way and point "
        "--data or the VISLANG_DATA environment variable at it instead, or run "
        "`vislang data download ikea` again once the machine is online."
    )


def _extract(archive: Path, out: Path, url: str) -> Path:
    try:
        with zipfile.ZipFile(archive) as zf:
            damaged = zf.testzip()  # every member's CRC
            if damaged is not None:
                raise DownloadError(_download_failed(url, f"the archive is damaged ({damaged} fails its CRC check)"))
            # extractall drops absolute paths and ".." parts, so members stay inside `out`.
            zf.extractall(out)
    except zipfile.BadZipFile as exc:
        raise DownloadError(_download_failed(url, f"not a zip archive: {exc}")) from exc
    return _find_repo_root(out)


def _verify(dataset: Path, counts: Mapping[str, int], minimum: Mapping[str, int], url: str) -> int:
    """Check a converted dataset: the counts against `minimum`, and every image decodes (with a
    progress bar). Returns how many did not (warned about); raises DownloadError when too few are left."""
    from .images import ImageLoadError, SkipCounter, load_image

    short = [f"{counts.get(kind, 0)} {kind} (expected at least {least})" for kind, least in minimum.items()
             if counts.get(kind, 0) < least]
    if short:
        raise DownloadError(_download_failed(url, "the archive is not the whole dataset: it holds " + ", ".join(short)))
    skipped = SkipCounter()
    images = sorted((dataset / IMAGES_DIR).rglob("*.jpg"))
    for image in tqdm(images, desc="verifying images", unit="img", mininterval=1.0):
        try:
            load_image(image, min_side=64)
        except ImageLoadError as err:
            skipped.add(err)
    skipped.warn("images of the downloaded dataset, whose rows are skipped when the catalog is read")
    return len(skipped.skipped)


def _find_repo_root(folder: Path) -> Path:
    if (folder / TEXT_DIR).is_dir():
        return folder
    # GitHub archives wrap everything in one "<repo>-<branch>/" folder.
    children = [p for p in folder.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / TEXT_DIR).is_dir():
        return children[0]
    raise SourceLayoutError(f"no {TEXT_DIR}/ folder found in the downloaded archive under {folder}")


# --------------------------------------------------------------------------- convert


def convert_ikea(src: Path, dest: Path, *, seed: int = 0) -> dict[str, int]:
    """Convert a checkout of ``IvonaTau/ikea`` at ``src`` into ``dest``.

    Writes ``products.jsonl``, ``rooms.jsonl``, ``images/products/<id>.jpg`` and
    ``images/rooms/<id>.jpg`` with a seeded 75/10/15 % train/val/test split
    (products by id, rooms grouped by title). Returns counts of what was written
    and skipped. Raises ``SourceLayoutError`` naming the first missing file.
    """
    src, dest = Path(src), Path(dest)
    meta = _read_metadata(src)
    images = _index_product_images(src / IMAGES_DIR)
    products = _build_products(meta, images)
    rooms, room_files = _build_rooms(
        src / IMAGES_DIR / ROOMS_SUBDIR, meta, {p["id"] for p in products}
    )

    product_split = assign_splits({p["id"]: p["id"] for p in products}, seed=seed)
    room_split = assign_splits({r["id"]: r["title"] for r in rooms}, seed=seed)
    for p in products:
        p["split"] = product_split[p["id"]]
    for r in rooms:
        r["split"] = room_split[r["id"]]

    sources = {p["image"]: images[p["id"]][0] for p in products}
    sources.update({r["image"]: room_files[r["id"]] for r in rooms})
    _write_dataset(dest, products, rooms, sources)
    return _counts(products, rooms, meta, images)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise SourceLayoutError(
            f"IKEA source is not in the expected IvonaTau/ikea layout: missing {what} ({path})"
        )
    return path


def _load_mapping(path: Path) -> dict[str, Any]:
    data = safe_load(path)
    if not isinstance(data, Mapping):
        raise SourceLayoutError(f"{path.name}: expected a dict, got {type(data).__name__}")
    return dict(data)


def _read_metadata(src: Path) -> dict[str, dict[str, Any]]:
    _require(src, "source folder")
    _require(src / IMAGES_DIR / ROOMS_SUBDIR, f"{IMAGES_DIR}/{ROOMS_SUBDIR}/")
    text = src / TEXT_DIR
    required = (PRODUCTS_PICKLE, ITEM_TO_ROOM_PICKLE, ROOM_ITEMS_PICKLE, ROOM_CATEGORIES_PICKLE)
    meta = {name: _load_mapping(_require(text / name, f"{TEXT_DIR}/{name}")) for name in required}
    for name in (IMG_TO_DESC_PICKLE, ITEM_TYPES_PICKLE):  # only used to fill gaps
        meta[name] = _load_mapping(text / name) if (text / name).exists() else {}

    bad = [k for k, v in meta[PRODUCTS_PICKLE].items() if not isinstance(v, Mapping)]
    if bad:
        raise SourceLayoutError(
            f"{PRODUCTS_PICKLE}: expected id -> dict of fields, but {bad[0]!r} maps to "
            f"{type(meta[PRODUCTS_PICKLE][bad[0]]).__name__}"
        )
    return meta


def _stem(path_or_id: str) -> str:
    """Article id from a key or path: 'images/objects/202.049.06.jpg' -> '202.049.06'.

    Path.stem would cut '202.049.06' to '202.049', so only a .jpg suffix is dropped.
    """
    name = str(path_or_id).replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-4] if name.lower().endswith(".jpg") else name


def _basename(path: str) -> str:
    return str(path).replace("\\", "/").rsplit("/", 1)[-1]


def _index_product_images(images_dir: Path) -> dict[str, tuple[Path, str | None]]:
    """Map product id -> (image file, coarse category or None).

    Only ``*.jpg`` files count (the shared copy has none of the two odd
    ``.jpeg``/``.JPG`` clocks). Some articles are filed both under objects/ and
    under a category folder; the category folder wins, for the label and the image.
    """
    _require(images_dir, f"{IMAGES_DIR}/")
    folders = sorted(
        (p for p in images_dir.iterdir() if p.is_dir() and p.name != ROOMS_SUBDIR),
        key=lambda p: (p.name != UNLABELLED_SUBDIR, p.name),
    )
    index: dict[str, tuple[Path, str | None]] = {}
    for img in sorted(images_dir.glob("*.jpg")):
        index[_stem(img.name)] = (img, None)
    for folder in folders:
        category = None if folder.name == UNLABELLED_SUBDIR else folder.name
        for img in sorted(folder.glob("*.jpg")):
            pid = _stem(img.name)
            if pid in index and index[pid][1] is not None:
                continue  # first category folder (alphabetically) keeps it
            index[pid] = (img, category)
    if not index:
        raise SourceLayoutError(f"no product images (*.jpg) found under {images_dir}")
    return index


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _first(value: Any, fallback: Any) -> Any:
    """``value`` unless it is absent; an empty string in products_dict.p is kept."""
    return fallback if value is None else value


def _description(raw: Any) -> str:
    desc = _text(raw)
    if desc.startswith(_DESC_BOILERPLATE):
        desc = desc[len(_DESC_BOILERPLATE) :].strip()
    return desc


def _build_products(
    meta: Mapping[str, Mapping[str, Any]], images: Mapping[str, tuple[Path, str | None]]
) -> list[dict[str, Any]]:
    fallback_text = {
        _stem(k): v for k, v in meta[IMG_TO_DESC_PICKLE].items() if isinstance(v, Mapping)
    }
    fallback_type = {_stem(k): v for k, v in meta[ITEM_TYPES_PICKLE].items()}
    products = []
    for key, fields in meta[PRODUCTS_PICKLE].items():
        pid = _stem(key)
        if pid not in images:
            continue
        extra = fallback_text.get(pid, {})
        products.append(
            {
                "id": pid,
                "name": _text(_first(fields.get("name"), extra.get("name"))),
                "type": _text(_first(fields.get("type"), fallback_type.get(pid))),
                "color": _text(fields.get("color")),
                "size": _text(fields.get("size")),
                "description": _description(_first(fields.get("desc"), extra.get("desc"))),
                "category": images[pid][1],
                "image": f"images/products/{pid}.jpg",
            }
        )
    products.sort(key=lambda p: p["id"])
    return products


def room_id(file_name: str) -> str:
    """Stable 12-hex-char id of a room photo: sha1 of its original file name."""
    return hashlib.sha1(_basename(file_name).encode("utf-8")).hexdigest()[:12]


def room_title(file_name: str) -> str:
    """Title from a room photo's file name.

    'ikea-a-clean-way-to-display-or-tidy-away.__1364309466684-s4.jpg'
    -> 'a clean way to display or tidy away'
    """
    stem = _stem(file_name)
    stem = stem.removeprefix("ikea-")
    # Photo suffixes are '__<13-digit timestamp>-s4' or '-<timestamp>'.
    stem = re.split(r"__|-\d{10,}", stem, maxsplit=1)[0]
    return re.sub(r"[-\s]+", " ", stem).strip(" .")


def _rooms_by_product(item_to_room: Mapping[str, Any]) -> dict[str, set[str]]:
    """Invert item_to_room.p to room file name -> product ids."""
    by_room: dict[str, set[str]] = {}
    for item, room_paths in item_to_room.items():
        if isinstance(room_paths, str):
            room_paths = [room_paths]
        for room_path in room_paths:
            by_room.setdefault(_basename(room_path), set()).add(_stem(item))
    return by_room


def _build_rooms(
    rooms_dir: Path, meta: Mapping[str, Mapping[str, Any]], product_ids: set[str]
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Room rows, and room id -> source photo."""
    categories = {_basename(k): v for k, v in meta[ROOM_CATEGORIES_PICKLE].items()}
    item_types = {_basename(k): v for k, v in meta[ROOM_ITEMS_PICKLE].items()}
    in_room = _rooms_by_product(meta[ITEM_TO_ROOM_PICKLE])
    rooms, files = [], {}
    for img in sorted(rooms_dir.glob("*.jpg")):
        rid = room_id(img.name)
        if rid in files:
            raise SourceLayoutError(f"room id collision between {files[rid].name} and {img.name}")
        files[rid] = img
        category = categories.get(img.name)
        rooms.append(
            {
                "id": rid,
                "title": room_title(img.name),
                "category": _text(category) if category is not None else None,
                "image": f"images/rooms/{rid}.jpg",
                "item_types": [_text(t) for t in item_types.get(img.name) or []],
                "product_ids": sorted(in_room.get(img.name, set()) & product_ids),
            }
        )
    if not rooms:
        raise SourceLayoutError(f"no room photos (*.jpg) found in {rooms_dir}")
    return rooms, files


def assign_splits(group_of: Mapping[str, str], *, seed: int = 0) -> dict[str, str]:
    """Seeded train/val/test split (75/10/15 %) that keeps each group on one side.

    ``group_of`` maps item -> group key (the item itself for an ungrouped split).
    Groups are shuffled with ``random.Random(seed)`` and poured into train, then
    val, then test until each holds its share of items.
    """
    members: dict[str, list[str]] = {}
    for item, group in group_of.items():
        members.setdefault(group, []).append(item)
    order = sorted(members)
    random.Random(seed).shuffle(order)

    total = len(group_of)
    bounds, acc = [], 0
    for name, frac in SPLIT_FRACTIONS[:-1]:
        acc += int(frac * total + 1e-9)
        bounds.append((name, acc))

    split_of: dict[str, str] = {}
    filled = 0
    for group in order:
        split = next((name for name, bound in bounds if filled < bound), SPLIT_FRACTIONS[-1][0])
        for item in members[group]:
            split_of[item] = split
        filled += len(members[group])
    return split_of


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _write_dataset(
    dest: Path,
    products: list[dict[str, Any]],
    rooms: list[dict[str, Any]],
    sources: Mapping[str, Path],
) -> None:
    """Write the two JSONL files and copy each ``image`` from ``sources[image]``."""
    (dest / "images" / "products").mkdir(parents=True, exist_ok=True)
    (dest / "images" / "rooms").mkdir(parents=True, exist_ok=True)
    # Bytes are copied as-is: re-encoding would change the pixels.
    for rel, src in sources.items():
        shutil.copyfile(src, dest / rel)
    _write_jsonl(dest / "products.jsonl", products)
    _write_jsonl(dest / "rooms.jsonl", rooms)


def _counts(
    products: list[dict[str, Any]],
    rooms: list[dict[str, Any]],
    meta: Mapping[str, Mapping[str, Any]],
    images: Mapping[str, tuple[Path, str | None]],
) -> dict[str, int]:
    ids = {p["id"] for p in products}
    listed = {_stem(k) for k in meta[PRODUCTS_PICKLE]}
    counts = {
        "products": len(products),
        "rooms": len(rooms),
        "rooms_with_products": sum(1 for r in rooms if r["product_ids"]),
        "room_product_links": sum(len(r["product_ids"]) for r in rooms),
        "products_without_image": len(listed - ids),
        "images_without_metadata": len(set(images) - listed),
    }
    for kind, rows in (("products", products), ("rooms", rooms)):
        by_split = Counter(row["split"] for row in rows)
        for name, _ in SPLIT_FRACTIONS:
            counts[f"{kind}_{name}"] = by_split.get(name, 0)
    return counts
