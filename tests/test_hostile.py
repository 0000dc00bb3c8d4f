"""Hostile inputs (tests/hostile_corpus.py): every reader and command either skips a bad item with a
counted warning or stops with one clear message; none crashes, hangs or writes a half file."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hostile_corpus import (BAD_ROWS, HOSTILE_FILES, LONG_CAPTION, NOT_FILES, UNDECODABLE, USABLE,
                            make_hostile_catalog, make_hostile_manifest, write_hostile_files)
from vislang.data import read_catalog
from vislang.data.images import ImageLoadError, load_image
from vislang.data.shards import write_shards

ROOT = Path(__file__).resolve().parents[1]


def test_every_hostile_file_is_read_as_rgb_or_refused_with_an_error_naming_it(tmp_path):
    usable = write_hostile_files(tmp_path)
    assert sorted(usable) == sorted(HOSTILE_FILES) and sorted(n for n, ok in usable.items() if ok) == sorted(USABLE)
    for name in USABLE:
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and min(image.size) >= 32, name
    for name in (*UNDECODABLE, *NOT_FILES):
        with pytest.raises(ImageLoadError, match=re.escape(name)):
            load_image(tmp_path / name)
    with pytest.raises(ImageLoadError, match="^image too large: .*30000x30000"):
        load_image(tmp_path / "bomb-30000x30000.png")
    with pytest.raises(ImageLoadError, match="^cannot open: .*loop-a.jpg .*symbolic links"):
        load_image(tmp_path / "loop-a.jpg")
    with pytest.raises(ImageLoadError, match="^not a regular file: .*folder.jpg"):
        load_image(tmp_path / "folder.jpg")
    # 16-bit samples keep their top 8 bits: a gradient, not the white that Pillow's convert() clips them to
    grey = np.asarray(load_image(tmp_path / "sixteen-bit.png"))[..., 0]
    assert grey.min() == 0 and 100 < grey.mean() < 160 and len(np.unique(grey)) > 100
    assert np.asarray(load_image(tmp_path / "animated.gif"))[0, 0].tolist() == [255, 0, 0]  # the first frame


def test_a_named_pipe_is_refused_not_read_forever(tmp_path):
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    code = ("import sys; from vislang.data.images import load_image, ImageLoadError\n"
            "try:\n    load_image(sys.argv[1])\nexcept ImageLoadError as err:\n    print(err)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code, str(pipe)], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.strip() == f"not a regular file: {pipe}", result.stderr


def test_the_hostile_catalog_keeps_every_good_row_and_counts_each_bad_one(tmp_path):
    root = make_hostile_catalog(tmp_path / "catalog")
    with pytest.warns(UserWarning) as caught:
        catalog = read_catalog(root)
    messages = [str(w.message) for w in caught]
    skipped = [m for m in messages if "skipped" in m]
    assert len(skipped) == 1 and f"skipped {BAD_ROWS['catalog']} rows (" in skipped[0]
    for reason in ("5 image missing or not a file", "3 bad fields", "2 not JSON", "2 not UTF-8",
                   "2 not a JSON object", "1 no caption", "1 duplicate id", "1 unknown split", "1 image path unusable"):
        assert reason in skipped[0], (reason, skipped[0])
    assert any("1 room(s) name 2 product(s) that are not in the catalog" in m for m in messages)
    assert len(catalog.problems) == BAD_ROWS["catalog"]
    ids = {item.id for item in catalog}
    hostile = {f"h{i:02d}" for i, name in enumerate(HOSTILE_FILES) if name not in NOT_FILES}
    assert hostile <= ids and not {f"h{i:02d}" for i, name in enumerate(HOSTILE_FILES) if name in NOT_FILES} & ids
    assert len(ids) == len(catalog) == 48 + 8 + len(hostile) + 1 + 2  # good products and rooms, the files, h-long, 2 rooms
    assert catalog.get("h-long").caption.startswith(LONG_CAPTION[:50]) and len(catalog.get("h-long").caption) > 100_000
    assert catalog.get("000.000.00").image.name == "000.000.00.jpg"  # the first of a duplicate id is kept
    assert catalog.get("hroom-ghosts").links == () and catalog.get("hroom-broken").links == ("000.000.00",)


def test_the_hostile_manifest_keeps_every_good_row_and_counts_each_bad_one(tmp_path):
    manifest = make_hostile_manifest(tmp_path)
    with pytest.warns(UserWarning, match=rf"skipped {BAD_ROWS['manifest']} rows \(4 image missing or not a file, "
                                         r"2 no image field, 2 not JSON, 1 no caption, 1 duplicate id, 1 not UTF-8\)"):
        catalog = read_catalog(manifest)
    assert len(catalog) == 12 + len(HOSTILE_FILES) - len(NOT_FILES) + 1


def test_shards_of_the_hostile_manifest_hold_every_readable_image_and_count_the_rest(tmp_path):
    with pytest.warns(UserWarning):
        catalog = read_catalog(make_hostile_manifest(tmp_path / "m"))
    with pytest.warns(UserWarning, match=rf"skipped {len(UNDECODABLE)} unreadable images \("):
        out = write_shards(catalog, tmp_path / "shards")
    assert len(read_catalog(out)) == len(catalog) - len(UNDECODABLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "shards"]  # no temporary left beside them


# ---------------------------------------------------------------- the commands, end to end


def _vislang(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("VISLANG_DATA", None)
    return subprocess.run([sys.executable, "-m", "vislang", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def _warnings(result: subprocess.CompletedProcess) -> list[str]:
    return [line[line.index("vislang "):] for line in result.stderr.splitlines() if ": warning: " in line]


@pytest.mark.slow
def test_train_index_eval_caption_and_search_on_the_hostile_catalog(tmp_path):
    root = make_hostile_catalog(tmp_path / "catalog")
    run, index = tmp_path / "run", tmp_path / "index"
    train = _vislang("train", "--config", "tiny", "--data", str(root), "--output", str(run), "model.image.image_size=32",
                     "train.batch_size=12", "train.epochs=2", cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Traceback" not in train.stderr
    said = _warnings(train)
    assert any(f"skipped {BAD_ROWS['catalog']} rows (" in line for line in said), said
    # the training split's regular files that do not decode: truncated.jpg and text-named.jpg
    assert any("skipped 2 unreadable images (2 not a readable image)" in line for line in said), said

    evaluated = _vislang("eval", "--checkpoint", str(run), "--data", str(root), "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    # test products and rooms, and every product (room photo -> products): the five that do not decode
    assert any(re.search(rf"skipped {len(UNDECODABLE)} unreadable images, whose items are left out of the evaluation "
                         r"\(4 not a readable image, 1 image too large\)", line) for line in _warnings(evaluated)), \
        _warnings(evaluated)
    metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert metrics["product_text2image_r10"] > 0  # figures, not an empty report

    built = _vislang("index", "build", "--checkpoint", str(run), "--data", str(root), "--output", str(index), cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    assert any("skipped 6 unreadable images" in line for line in _warnings(built)), _warnings(built)  # hroom-broken too
    with pytest.warns(UserWarning):  # its skipped rows
        readable = len(read_catalog(root)) - 6
    assert f"{index}: {readable} images" in built.stdout

    found = _vislang("search", "--index", str(index), "a red chair", "--json", cwd=tmp_path)
    assert found.returncode == 0 and json.loads(found.stdout)["results"], found.stderr[-3000:]
    bomb = _vislang("search", "--index", str(index), "--image", str(root / "images/hostile/bomb-30000x30000.png"),
                    cwd=tmp_path)
    assert bomb.returncode == 2 and bomb.stderr.strip().splitlines()[-1].startswith("vislang search: error: image too large")

    images = [str(p) for p in sorted((root / "images" / "hostile").iterdir())] + [str(root / "images/products/000.000.00.jpg")]
    captioned = _vislang("caption", "--checkpoint", str(run), *images, "--json", "--beams", "1", cwd=tmp_path)
    assert captioned.returncode == 0, captioned.stderr[-3000:]
    assert [row["image"] for row in json.loads(captioned.stdout)] == [p for p in images if Path(p).name in USABLE
                                                                      or p.endswith("000.000.00.jpg")]
    assert any(f"skipped {len(UNDECODABLE) + len(NOT_FILES) + 1} unreadable images" in line
               for line in _warnings(captioned)), _warnings(captioned)  # + loop-b.jpg, the loop's other half
    for result in (train, evaluated, built, found, bomb, captioned):
        assert "Traceback" not in result.stderr
