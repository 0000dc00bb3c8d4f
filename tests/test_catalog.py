import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from vislang.data import read_catalog, read_ikea, read_manifest
from vislang.data.catalog import product_caption, room_sentence
from vislang.data.pairs import PairSampler
from vislang.config import DEFAULTS


def _jpeg(path: Path, colour=(200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), colour).save(path)


def _row(pid, **extra):
    row = {"id": pid, "name": "MALM", "type": "Bed frame", "color": "White", "size": "90x200 cm",
           "description": "Sturdy.", "category": "bed", "image": f"images/products/{pid}.jpg", "split": "train"}
    row.update(extra)
    return row


def test_reader_keeps_good_rows_and_counts_bad_ones(tmp_path):
    for pid in ("good", "unknown", "corrupt"):
        _jpeg(tmp_path / "images" / "products" / f"{pid}.jpg")
    (tmp_path / "images" / "products" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = [
        json.dumps(_row("good")),
        json.dumps(_row("missing")),  # image file does not exist
        json.dumps(_row("nocaption", name="", type="", color="")),
        json.dumps(_row("unknown", shoe_size=42, extra={"x": 1})),  # unknown fields are ignored
        json.dumps(_row("corrupt")),  # exists; decoding problems are the image loader's job
        "{not json",
        json.dumps(_row("badsplit", split="holdout")),
    ]
    (tmp_path / "products.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="skipped 4 rows"):
        catalog = read_ikea(tmp_path)
    assert sorted(item.id for item in catalog) == ["corrupt", "good", "unknown"]
    assert len(catalog.problems) == 4
    assert any("missing" in p and "image missing" in p for p in catalog.problems)
    assert any("nocaption" in p for p in catalog.problems)
    assert any("products.jsonl:6" in p for p in catalog.problems)
    good = catalog.get("good")
    assert good.caption == "MALM Bed frame, White"
    assert good.texts == ("MALM Bed frame, White", "Sturdy.", "Bed frame", "Bed frame, 90x200 cm")


def test_caption_without_colour_has_no_dangling_comma():
    assert product_caption("No name", "Wall clock", "") == "No name Wall clock"
    assert room_sentence("Kitchen", ["Chair", "chair", "Table"]) == "a kitchen with chair, table"


def test_real_layout_rooms_link_products(tiny_catalog):
    catalog = read_catalog(tiny_catalog)
    rooms = catalog.select(kind="room")
    assert rooms and all(room.links for room in rooms)
    assert all(catalog.get(pid) is not None for room in rooms for pid in room.links)
    assert rooms[0].texts[1].startswith("a bedroom with")


def test_manifest_jsonl_and_csv(tmp_path):
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "b.jpg")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"image": "a.jpg", "captions": ["red box", "a box"], "split": "val"}) + "\n"
        + json.dumps({"image": "b.jpg", "caption": "blue box"}) + "\n"
        + json.dumps({"image": "nope.jpg", "caption": "lost"}) + "\n"
        + json.dumps({"image": "b.jpg", "caption": ""}) + "\n"
    )
    with pytest.warns(UserWarning, match="skipped 2 rows"):
        catalog = read_manifest(tmp_path / "m.jsonl")
    assert [(i.caption, i.split) for i in catalog] == [("red box", "val"), ("blue box", "train")]
    assert catalog.items[0].texts == ("red box", "a box")

    (tmp_path / "m.csv").write_text("image,caption,caption_2\na.jpg,red box,crate\nb.jpg,blue box,\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        csv_catalog = read_catalog(tmp_path / "m.csv")
    assert [i.texts for i in csv_catalog] == [("red box", "crate"), ("blue box",)]


def test_manifest_that_is_not_json_is_a_clear_error(tmp_path):
    (tmp_path / "m.jsonl").write_text("image,caption\n")
    with pytest.raises(ValueError, match="not a valid manifest"):
        read_manifest(tmp_path / "m.jsonl")


def test_sampler_positives_and_no_leak_from_other_splits(tiny_catalog):
    catalog = read_catalog(tiny_catalog)
    train = catalog.select("train")
    data_cfg = {**DEFAULTS["data"], "rooms_per_batch": 2, "linked_per_room": 3}
    sampler = PairSampler(train, data_cfg, batch_size=10, seed=0)
    train_ids = {item.id for item in train}
    for batch in sampler.epoch(0):
        assert len(set(batch.items)) == len(batch.items) == 10
        assert batch.positives.diagonal().all()
        for a, i in enumerate(batch.items):
            for b, j in enumerate(batch.items):
                # a room photo matches its products' texts; a product photo does not match its rooms' titles
                expected = a == b or batch.texts[b] in train[i].texts or train[j].id in train[i].links
                assert bool(batch.positives[a, b]) == expected
                assert bool(batch.links[a, b]) == (train[j].id in train[i].links or train[i].id in train[j].links)
    assert any(train[i].links for b in sampler.epoch(0) for i in b.items)  # the batches hold rooms with their products
    assert all(p in train_ids for links in sampler._links.values() for p in (train[j].id for j in links))
    first = [b.items for b in sampler.epoch(3)]
    assert first == [b.items for b in sampler.epoch(3)]  # an epoch replays exactly (resume relies on it)
    assert first != [b.items for b in sampler.epoch(4)]


def test_sampler_fills_a_batch_larger_than_the_non_room_images_and_draws_rooms_without_links(tiny_catalog):
    train = read_catalog(tiny_catalog).select("train")
    rooms = {i for i, item in enumerate(train) if item.links}
    size = len(train) - len(rooms) + 1  # one more than the products: a batch needs a room beyond the quota
    for cfg in ({"rooms_per_batch": 0}, {"room_links": False}, {"rooms_per_batch": 1, "linked_per_room": 0}):
        sampler = PairSampler(train, {**DEFAULTS["data"], **cfg}, batch_size=size, seed=0)
        batches = list(sampler.epoch(0))  # used to loop forever
        assert batches and all(len(set(b.items)) == len(b.items) == size for b in batches)
    unlinked = PairSampler(train, {**DEFAULTS["data"], "room_links": False}, batch_size=4, seed=0)
    drawn = {i for epoch in range(5) for b in unlinked.epoch(epoch) for i in b.items}
    assert rooms and rooms <= drawn  # without room links, rooms are still trained on, as plain images
