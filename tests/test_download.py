"""Tests for vislang.data.download and vislang.data.safe_pickle.

A tiny copy of the IvonaTau/ikea layout is built in tmp_path: JPEGs made with
PIL and pickles shaped like the originals. Nothing here touches the network.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import http.server
import io
import json
import os
import pickle
import re
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from vislang.data.download import (
    DownloadError,
    SourceLayoutError,
    assign_splits,
    convert_ikea,
    download_ikea,
    room_title,
)
from vislang.data import locate
from vislang.data.safe_pickle import UnsafePickleError, safe_load

PRODUCT_FIELDS = [
    "id",
    "name",
    "type",
    "color",
    "size",
    "description",
    "category",
    "image",
    "split",
]
ROOM_FIELDS = ["id", "title", "category", "image", "item_types", "product_ids", "split"]

N_OBJECTS = 30  # images/objects/<article>.jpg
CHAIRS = ["101.000.01", "101.000.02", "101.000.03", "101.000.04"]
CLOCKS = ["img1", "img2", "img3"]
BED = "190.265.47"  # filed under objects/ and bed/, as in the original repo
OBJECT_IDS = [f"{200 + i:03d}.{i:03d}.{i % 100:02d}" for i in range(N_OBJECTS)]
ALL_IDS = OBJECT_IDS + CHAIRS + CLOCKS + [BED]  # 38 products with metadata and a .jpg
NO_IMAGE_ID = "999.999.99"  # in products_dict.p, no image
NO_META_ID = "888.888.88"  # image on disk, not in products_dict.p

# (room file name, category); two photos share a title, one title has two slug forms.
ROOMS = [
    (f"ikea-room-number-{i}-for-testing__13643{i:08d}-s4.jpg", "Bedroom") for i in range(16)
] + [
    ("ikea-a-clean-way-to-display-or-tidy-away.__1364309466684-s4.jpg", "Living Room"),
    ("ikea-wake-up-and-grow__1364335362013-s4.jpg", "Baby Children Room"),
    ("ikea-wake-up-and-grow-1364335370196.jpg", "Baby Children Room"),
    (
        "ikea-storage-for-those-that-like-the-tall-traditional-types__1364308464000-s4.jpg",
        "Hallway",
    ),
    (
        "ikea-storage-for-those-that-like-the-tall-traditional-types__1364308465000-s4.jpg",
        "Hallway",
    ),
]
MISSING_ROOM = "ikea-a-room-not-on-disk__1364300000000-s4.jpg"


def _jpg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade % 256, 100, 150)).save(path, format="JPEG")


def _pickle(path: Path, obj: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _product_fields(pid: str, i: int) -> dict[str, str]:
    if pid.startswith("img"):
        return {
            "name": "No name",
            "type": "Wall clock",
            "color": "",
            "size": "",
            "desc": "No description",
            "img": f"images/clock/{pid}.jpg",
        }
    return {
        "name": f"NAME{i}",
        "type": "Chair" if pid in CHAIRS else "Frame",
        "color": "White, pine" if i % 5 else "",
        "size": f"{i}x{i} cm" if i % 3 else "",
        "desc": f"View more product information  Product number {i}." if i % 7 else "",
        "img": f"images/objects/{pid}.jpg",
    }


def make_source(root: Path) -> Path:
    """Write a miniature IvonaTau/ikea checkout under root and return root."""
    for i, pid in enumerate(OBJECT_IDS + [BED, NO_META_ID]):
        _jpg(root / "images" / "objects" / f"{pid}.jpg", i)
    for i, pid in enumerate(CHAIRS):
        _jpg(root / "images" / "chair" / f"{pid}.jpg", 50 + i)
    for i, pid in enumerate(CLOCKS):
        _jpg(root / "images" / "clock" / f"{pid}.jpg", 60 + i)
    _jpg(root / "images" / "clock" / "img46.jpeg", 70)  # not *.jpg: ignored, as in the shared copy
    _jpg(root / "images" / "bed" / f"{BED}.jpg", 80)
    for i, (name, _) in enumerate(ROOMS):
        _jpg(root / "images" / "room_scenes" / name, 100 + i)

    products = {pid: _product_fields(pid, i) for i, pid in enumerate(ALL_IDS + [NO_IMAGE_ID])}
    del (
        products[OBJECT_IDS[2]]["desc"],
        products[OBJECT_IDS[2]]["type"],
    )  # filled from the fallbacks
    # The original keys products by article id, item_to_room by image path, rooms by file name.
    item_to_room: dict[str, list[str]] = {}
    for i, (name, _) in enumerate(ROOMS):
        for pid in [ALL_IDS[i], ALL_IDS[i + 1], NO_IMAGE_ID] + (["img1"] if i == 2 else []):
            folder = "clock/" if pid.startswith("img") else ""
            item_to_room.setdefault(f"images/{folder}{pid}.jpg", []).append(
                f"images/room_scenes/{name}"
            )
    item_to_room.setdefault(f"images/{ALL_IDS[0]}.jpg", []).append(
        f"images/room_scenes/{MISSING_ROOM}"
    )
    room_to_items = {name: ["chair", "rug, flatwoven", "frame"] for name, _ in ROOMS[1:]}
    categories = {name: cat for name, cat in ROOMS}

    text = root / "text_data"
    _pickle(
        text / "products_dict.p", products, protocol=2
    )  # the 2017 originals are Python 2 pickles
    _pickle(text / "item_to_room.p", item_to_room, protocol=2)
    _pickle(text / "room_to_items.p", room_to_items)
    _pickle(text / "categories_dict.p", categories)
    _pickle(
        text / "img_to_desc.p",
        {f"/static/images/{p}.jpg": {"name": "ALT", "desc": "Fallback text."} for p in ALL_IDS},
    )
    _pickle(text / "categories_images_dict.p", {p: "Fallback type" for p in OBJECT_IDS})
    return root


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    base = tmp_path_factory.mktemp("ikea")
    src = make_source(base / "ikea-master")
    counts = convert_ikea(src, base / "out", seed=0)
    return base / "out", counts


# --------------------------------------------------------------------------- convert_ikea


def test_convert_counts(converted: tuple[Path, dict[str, int]]) -> None:
    out, counts = converted
    assert counts["products"] == len(ALL_IDS) == 38
    assert counts["rooms"] == len(ROOMS)
    assert counts["products_without_image"] == 1
    assert counts["images_without_metadata"] == 1
    assert counts["products_train"] + counts["products_val"] + counts["products_test"] == 38
    assert counts["rooms_train"] + counts["rooms_val"] + counts["rooms_test"] == len(ROOMS)


def test_product_rows(converted: tuple[Path, dict[str, int]]) -> None:
    out, _ = converted
    products = _rows(out / "products.jsonl")
    assert [p["id"] for p in products] == sorted(ALL_IDS)
    for p in products:
        assert list(p) == PRODUCT_FIELDS
        assert p["image"] == f"images/products/{p['id']}.jpg"
        assert (out / p["image"]).is_file()
        assert all(isinstance(p[k], str) for k in PRODUCT_FIELDS if k != "category")
        assert not p["description"].startswith("View more")
    by_id = {p["id"]: p for p in products}
    assert by_id[OBJECT_IDS[1]]["description"] == "Product number 1."
    assert by_id[OBJECT_IDS[0]]["description"] == ""  # empty stays empty
    assert by_id[OBJECT_IDS[2]]["description"] == "Fallback text."  # absent -> img_to_desc.p
    assert by_id[OBJECT_IDS[2]]["type"] == "Fallback type"  # absent -> categories_images_dict.p
    assert by_id[OBJECT_IDS[3]]["type"] == "Frame"
    assert by_id[OBJECT_IDS[1]]["name"] == "NAME1"
    assert by_id[OBJECT_IDS[1]]["category"] is None
    assert {by_id[c]["category"] for c in CHAIRS} == {"chair"}
    assert by_id["img1"] | {"split": None} == {
        "id": "img1",
        "name": "No name",
        "type": "Wall clock",
        "color": "",
        "size": "",
        "description": "No description",
        "category": "clock",
        "image": "images/products/img1.jpg",
        "split": None,
    }
    # A product filed under objects/ and bed/ gets the label and the photo from bed/.
    assert by_id[BED]["category"] == "bed"
    src_bed = out.parent / "ikea-master" / "images" / "bed" / f"{BED}.jpg"
    assert (out / by_id[BED]["image"]).read_bytes() == src_bed.read_bytes()
    assert NO_IMAGE_ID not in by_id and NO_META_ID not in by_id and "img46" not in by_id
    assert sorted(os.listdir(out / "images" / "products")) == sorted(f"{p}.jpg" for p in ALL_IDS)


def test_room_rows(converted: tuple[Path, dict[str, int]]) -> None:
    out, _ = converted
    rooms = _rows(out / "rooms.jsonl")
    product_ids = {p["id"] for p in _rows(out / "products.jsonl")}
    by_name = {hashlib.sha1(name.encode()).hexdigest()[:12]: name for name, _ in ROOMS}
    assert sorted(r["id"] for r in rooms) == sorted(by_name)
    for r in rooms:
        assert list(r) == ROOM_FIELDS
        assert len(r["id"]) == 12 and int(r["id"], 16) >= 0
        assert r["image"] == f"images/rooms/{r['id']}.jpg"
        assert (out / r["image"]).is_file()
        assert r["product_ids"] == sorted(r["product_ids"])
        assert set(r["product_ids"]) <= product_ids  # NO_IMAGE_ID is dropped
        assert r["title"] == room_title(by_name[r["id"]])
        assert r["category"] == dict(ROOMS)[by_name[r["id"]]]
    first = next(r for r in rooms if by_name[r["id"]] == ROOMS[0][0])
    assert first["item_types"] == []  # not listed in room_to_items.p
    assert first["product_ids"] == sorted([ALL_IDS[0], ALL_IDS[1]])
    second = next(r for r in rooms if by_name[r["id"]] == ROOMS[1][0])
    assert second["item_types"] == ["chair", "rug, flatwoven", "frame"]
    # Clock photos are keyed 'images/clock/imgN.jpg' in item_to_room.p.
    clock_rooms = [r for r in rooms if "img1" in r["product_ids"]]
    assert [by_name[r["id"]] for r in clock_rooms] == [ROOMS[2][0]]
    assert clock_rooms[0]["product_ids"] == sorted([ALL_IDS[2], ALL_IDS[3], "img1"])


@pytest.mark.parametrize(
    ("name", "title"),
    [
        (
            "ikea-a-clean-way-to-display-or-tidy-away.__1364309466684-s4.jpg",
            "a clean way to display or tidy away",
        ),
        ("ikea-wake-up-and-grow-1364335370196.jpg", "wake up and grow"),
        (
            "ikea-breathe-in-the-scent-of-natural-pinewood-__1364308431445-s4.jpg",
            "breathe in the scent of natural pinewood",
        ),
        (
            "ikea-an-urban-oasis-in-4-metres-square__1364309709232-s4.jpg",
            "an urban oasis in 4 metres square",
        ),
        (
            "images/room_scenes/ikea-enjoy-a-traditional-scandinavian-family-setting.-clogs-optional.__1364308405550-s4.jpg",
            "enjoy a traditional scandinavian family setting. clogs optional",
        ),
    ],
)
def test_room_title(name: str, title: str) -> None:
    assert room_title(name) == title


def test_splits_grouped_and_proportional(converted: tuple[Path, dict[str, int]]) -> None:
    out, counts = converted
    products = _rows(out / "products.jsonl")
    rooms = _rows(out / "rooms.jsonl")
    assert {p["split"] for p in products} == {"train", "val", "test"}
    # 38 products: floor(75 %) = 28 train, floor(10 %) = 3 val, the rest (7) test.
    assert collections.Counter(p["split"] for p in products) == {"train": 28, "val": 3, "test": 7}
    assert (counts["products_train"], counts["products_val"], counts["products_test"]) == (28, 3, 7)
    splits_by_title: dict[str, set[str]] = collections.defaultdict(set)
    for r in rooms:
        splits_by_title[r["title"]].add(r["split"])
    assert len(splits_by_title) == len(ROOMS) - 2
    assert all(len(s) == 1 for s in splits_by_title.values())
    n_train = sum(r["split"] == "train" for r in rooms)
    assert 14 <= n_train <= 16  # 75 % of 21, give or take one two-photo title


def test_assign_splits_keeps_groups_and_shares() -> None:
    groups = {f"item{i}": f"group{i // 3}" for i in range(300)}
    split = assign_splits(groups, seed=3)
    share = collections.Counter(split.values())
    assert abs(share["train"] - 225) <= 2 and abs(share["val"] - 30) <= 2
    for g in set(groups.values()):
        assert len({split[i] for i, gg in groups.items() if gg == g}) == 1
    assert assign_splits(groups, seed=3) == split
    assert assign_splits(groups, seed=4) != split


def test_split_is_deterministic(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    convert_ikea(src, tmp_path / "a", seed=7)
    convert_ikea(src, tmp_path / "b", seed=7)
    convert_ikea(src, tmp_path / "c", seed=8)
    for name in ("products.jsonl", "rooms.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    splits = lambda d: [p["split"] for p in _rows(tmp_path / d / "products.jsonl")]  # noqa: E731
    assert splits("a") != splits("c")


@pytest.mark.parametrize(
    "missing",
    [
        "text_data/products_dict.p",
        "text_data/item_to_room.p",
        "text_data/room_to_items.p",
        "text_data/categories_dict.p",
        "images/room_scenes",
    ],
)
def test_missing_source_file(tmp_path: Path, missing: str) -> None:
    src = make_source(tmp_path / "src")
    target = src / missing
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(SourceLayoutError, match=Path(missing).name) as info:
        convert_ikea(src, tmp_path / "out")
    assert isinstance(info.value, ValueError)


def test_missing_source_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceLayoutError, match="source folder"):
        convert_ikea(tmp_path / "nowhere", tmp_path / "out")


def test_wrong_pickle_shape(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    _pickle(src / "text_data" / "products_dict.p", ["not", "a", "dict"])
    with pytest.raises(SourceLayoutError, match="products_dict.p"):
        convert_ikea(src, tmp_path / "out")


# --------------------------------------------------------------------------- safe_load


class Custom:
    def __init__(self) -> None:
        self.value = 1


class RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_safe_load_plain_data(tmp_path: Path) -> None:
    data = {
        "a": [1, 2.5, None, True, "x", b"raw"],
        "t": (1, "two"),
        "s": {1, 2},
        "f": frozenset({"k"}),
        "od": collections.OrderedDict([("z", 1), ("a", 2)]),
        "dd": collections.defaultdict(list, {"k": ["v"]}),
    }
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        blob = pickle.dumps(data, protocol=protocol)
        assert safe_load(blob) == data
        assert safe_load(io.BytesIO(blob)) == data
        path = tmp_path / f"p{protocol}.p"
        path.write_bytes(blob)
        assert safe_load(path) == data
        assert safe_load(str(path)) == data


def test_safe_load_python2_pickle() -> None:
    # Python 2 protocol 2: str as SHORT_BINSTRING (UTF-8 bytes), builtins as "__builtin__".
    assert safe_load(b"\x80\x02}U\x04nameU\x06DR\xc3\x96MLs.") == {"name": "DR\u00d6ML"}
    assert safe_load(b"\x80\x02c__builtin__\nset\n(U\x01aU\x01bl\x85R.") == {"a", "b"}


def test_safe_load_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps(RunsCommand(marker))
    with pytest.raises(UnsafePickleError, match="system") as info:
        safe_load(blob)
    assert isinstance(info.value, ValueError)
    assert not marker.exists()  # nothing ran


def test_safe_load_refuses_custom_class() -> None:
    with pytest.raises(UnsafePickleError, match=r"test_download\.Custom"):
        safe_load(pickle.dumps(Custom()))


def test_safe_load_refuses_codecs_tricks() -> None:
    # Protocol 2 stores bytes as _codecs.encode(text, "latin1"); nothing else is honoured.
    blob = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(UnsafePickleError, match="zlib"):
        safe_load(blob)


def test_safe_load_refuses_builtin_callables() -> None:
    # 'eval' lives in builtins, but only container/scalar types are allowed there.
    blob = b"cbuiltins\neval\n(V1+1\ntR."
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_load(blob)


def test_convert_refuses_malicious_pickle(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    marker = tmp_path / "pwned"
    _pickle(src / "text_data" / "room_to_items.p", {"x": RunsCommand(marker)})
    with pytest.raises(UnsafePickleError):
        convert_ikea(src, tmp_path / "out")
    assert not marker.exists()


# --------------------------------------------------------------------------- download_ikea


def test_download_unreachable(tmp_path: Path) -> None:
    parent = tmp_path / "data"
    dest = parent / "ikea"
    url = "http://127.0.0.1:9/x.zip"
    with pytest.raises(DownloadError) as info:
        download_ikea(dest, url=url)
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "download failed" in message.lower()
    assert url in message
    assert "--data" in message and "VISLANG_DATA" in message
    assert not dest.exists()
    assert list(parent.iterdir()) == []  # no temp folder left behind


def _zip_source(tmp_path: Path) -> Path:
    src = make_source(tmp_path / "build" / "ikea-master")
    archive = tmp_path / "master.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, f.relative_to(src.parent).as_posix())
    return archive


def test_download_from_archive(tmp_path: Path) -> None:
    archive = _zip_source(tmp_path)
    dest = tmp_path / "data" / "ikea"
    assert download_ikea(dest, url=archive.as_uri(), seed=0) == dest
    assert len(_rows(dest / "products.jsonl")) == len(ALL_IDS)
    assert len(_rows(dest / "rooms.jsonl")) == len(ROOMS)
    assert os.listdir(dest.parent) == ["ikea"]
    # Same seed, same source: the same dataset as a direct conversion.
    convert_ikea(tmp_path / "build" / "ikea-master", tmp_path / "direct", seed=0)
    assert (dest / "products.jsonl").read_bytes() == (
        tmp_path / "direct" / "products.jsonl"
    ).read_bytes()


def test_download_not_a_zip(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"<html>rate limited</html>")
    dest = tmp_path / "data" / "ikea"
    with pytest.raises(DownloadError, match="not a zip"):
        download_ikea(dest, url=bogus.as_uri())
    assert list((tmp_path / "data").iterdir()) == []


def test_download_refuses_non_empty_dest(tmp_path: Path) -> None:
    dest = tmp_path / "ikea"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        download_ikea(dest, url="http://127.0.0.1:9/x.zip")
    assert (dest / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- over HTTP, on loopback


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; /cut/NAME sends NAME's Content-Length but only half its bytes."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        data = (Path(self.directory) / self.path[len("/cut/"):]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True


@pytest.fixture
def served(tmp_path: Path):
    """(folder, base URL): an HTTP server on 127.0.0.1 serving `folder`, for the test's duration."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _serve_archive(tmp_path: Path, folder: Path) -> Path:
    """The miniature repository's archive, in the served folder as master.zip."""
    return _zip_source(tmp_path).rename(folder / "master.zip")


def test_download_over_http_verifies_and_records_what_it_fetched(tmp_path: Path, served, capsys) -> None:
    folder, base = served
    archive = _serve_archive(tmp_path, folder)
    dest = download_ikea(tmp_path / "data" / "ikea", url=f"{base}/master.zip")
    provenance = json.loads((dest / "download.json").read_text())
    assert provenance["source"] == f"{base}/master.zip"
    assert provenance["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert provenance["counts"]["products"] == len(ALL_IDS) and provenance["unreadable_images"] == 0
    assert len(_rows(dest / "products.jsonl")) == len(ALL_IDS)
    assert os.listdir(dest.parent) == ["ikea"]  # no archive, no temporary left
    err = capsys.readouterr().err
    assert "IKEA dataset" in err and "verifying images" in err  # the progress bars


@pytest.mark.parametrize("damage, message", [
    ("cut", "the connection ended after"),
    ("crc", "fails its CRC check"),
    ("few", "not the whole dataset: it holds 38 products (expected at least 1000)"),
])
def test_a_bad_download_is_one_clear_error_and_leaves_nothing(tmp_path: Path, served, damage, message) -> None:
    folder, base = served
    archive = _serve_archive(tmp_path, folder)
    url, minimum = f"{base}/master.zip", None
    if damage == "cut":
        url = f"{base}/cut/master.zip"
    elif damage == "crc":  # a byte of a stored member's data changed: the zip still opens
        data = bytearray(archive.read_bytes())
        with zipfile.ZipFile(archive) as zf:
            info = zf.infolist()[-1]
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        data[start + info.compress_size // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
    else:
        minimum = {"products": 1000}
    parent = tmp_path / "data"
    with pytest.raises(DownloadError, match=re.escape(message)):
        download_ikea(parent / "ikea", url=url, minimum=minimum)
    assert list(parent.iterdir()) == []


def test_the_command_downloads_into_the_cache_folder_where_vislang_then_finds_it(tmp_path: Path, served, monkeypatch,
                                                                                  capsys) -> None:
    from vislang.cli.main import main

    folder, base = served
    _serve_archive(tmp_path, folder)
    monkeypatch.setenv("VISLANG_IKEA_URL", f"{base}/master.zip")
    monkeypatch.delenv("VISLANG_DATA", raising=False)
    monkeypatch.setattr(locate, "DEFAULT_RELATIVE", Path("no-such-folder"))  # no ../shared/data/ikea either
    assert main(["data", "download", "ikea"]) == 0
    cached = tmp_path / "cache" / "data" / "ikea"  # VISLANG_CACHE is tmp_path/cache in every test
    assert f"IKEA catalog written to {cached}; vislang finds it there by itself" in capsys.readouterr().out
    assert locate.find_data_dir() == cached
    assert main(["data", "download", "ikea"]) == 2  # there already: not overwritten
    assert "already exists and is not empty" in capsys.readouterr().err


def test_an_offline_first_run_says_how_to_get_the_data_and_exits_2(tmp_path: Path, monkeypatch, capsys) -> None:
    from vislang.cli.main import main

    monkeypatch.setenv("VISLANG_IKEA_URL", "http://127.0.0.1:9/master.zip")  # nothing listens there
    monkeypatch.delenv("VISLANG_DATA", raising=False)
    monkeypatch.setattr(locate, "DEFAULT_RELATIVE", Path("no-such-folder"))
    assert main(["demo", "--config", "tiny", "--output", str(tmp_path / "demo")]) == 2
    captured = capsys.readouterr()
    assert "no catalog found; downloading the public IKEA dataset" in captured.out
    error = [line for line in captured.err.splitlines() if "error" in line]
    assert len(error) == 1 and error[0].startswith("vislang demo: error: IKEA dataset download failed")
    assert "--data" in error[0] and "VISLANG_DATA" in error[0] and "vislang data download ikea" in error[0]
    assert not (tmp_path / "cache" / "data" / "ikea").exists() and not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_a_first_demo_with_no_catalog_downloads_it_and_goes_on(tmp_path: Path, served, monkeypatch, capsys) -> None:
    from vislang.cli.main import main

    folder, base = served
    _serve_archive(tmp_path, folder)
    monkeypatch.setenv("VISLANG_IKEA_URL", f"{base}/master.zip")
    monkeypatch.delenv("VISLANG_DATA", raising=False)
    monkeypatch.setattr(locate, "DEFAULT_RELATIVE", Path("no-such-folder"))
    code = main(["demo", "--config", "tiny", "--output", str(tmp_path / "demo"), "model.image.image_size=32",
                 "train.batch_size=8", "model.matching.enabled=false", "model.decoder.enabled=false"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert f"downloading the public IKEA dataset into {tmp_path / 'cache' / 'data' / 'ikea'}" in captured.out
    assert "test split" in captured.out and (tmp_path / "demo" / "results.png").is_file()
    metrics = json.loads((tmp_path / "demo" / "test_metrics.json").read_text())
    assert metrics["product_text2image_r10"] > 0


def test_a_download_stopped_before_it_is_published_leaves_nothing_and_can_be_run_again(tmp_path: Path, served,
                                                                                         monkeypatch) -> None:
    from vislang import atomic

    folder, base = served
    _serve_archive(tmp_path, folder)

    def fault(kind: str, path: Path) -> None:  # converted and verified, not yet renamed into place
        if kind == "download":
            raise RuntimeError(f"injected fault at {path}")

    monkeypatch.setattr(atomic, "fault_hook", fault)
    parent = tmp_path / "data"
    with pytest.raises(RuntimeError, match="injected fault"):
        download_ikea(parent / "ikea", url=f"{base}/master.zip")
    assert list(parent.iterdir()) == []  # neither the dataset nor the archive or its temporaries
    monkeypatch.setattr(atomic, "fault_hook", None)
    assert len(_rows(download_ikea(parent / "ikea", url=f"{base}/master.zip") / "products.jsonl")) == len(ALL_IDS)
