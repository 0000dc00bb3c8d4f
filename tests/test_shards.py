"""Webdataset shards: `vislang data prepare`, reading them back, and training on them."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vislang.cli.main import main
from vislang.config import load_config
from vislang.data import read_catalog
from vislang.data.images import load_image
from vislang.data.shards import write_shards
from vislang.train import train
from vislang.train.logger import read_metrics

from test_cli import run_cli
from test_train import CONFIG, TINY_OVERRIDES

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # trains a model or spawns processes: `pytest -m 'not slow'` leaves it out


@pytest.fixture(scope="module")
def shards(tiny_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "ikea"
    result = run_cli("data", "prepare", "--data", str(tiny_catalog), "--output", str(out), "--shard-size", "20")
    assert result.returncode == 0, result.stderr
    return out


def test_prepare_writes_shards_and_a_manifest(tiny_catalog, shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    source = read_catalog(tiny_catalog)
    assert manifest["count"] == len(source) and len(manifest["shards"]) == -(-len(source) // 20)
    assert sorted(p.name for p in shards.glob("*.tar")) == manifest["shards"]


def test_shards_read_back_as_the_same_catalog_with_the_same_pixels(tiny_catalog, shards):
    source, copy = read_catalog(tiny_catalog), read_catalog(shards)
    assert [(i.id, i.kind, i.texts, i.split, i.links, i.meta) for i in copy] == \
           [(i.id, i.kind, i.texts, i.split, i.links, i.meta) for i in source]
    for a, b in zip(source.items[:5] + source.items[-3:], copy.items[:5] + copy.items[-3:]):
        assert np.array_equal(np.asarray(load_image(a.image)), np.asarray(load_image(b.image)))


def test_large_images_are_shrunk_to_max_side(tmp_path, tiny_catalog):
    catalog = read_catalog(tiny_catalog)
    big = tmp_path / "big.png"
    Image.new("RGB", (900, 300), (10, 200, 30)).save(big)
    item = catalog.items[0]
    catalog.items[0] = type(item)(item.id, item.kind, big, item.texts, item.split, item.links, item.meta)
    out = write_shards(catalog, tmp_path / "shards", max_side=64)
    image = load_image(read_catalog(out).items[0].image)
    assert image.size == (64, 21) and np.abs(np.asarray(image, int)[10, 10] - (10, 200, 30)).max() < 8


def test_training_on_shards_gives_the_metrics_of_the_folder(tiny_catalog, shards, tmp_path):
    config = load_config(CONFIG, [*TINY_OVERRIDES, "train.epochs=3"])
    evals = []
    for data, name in ((tiny_catalog, "folder"), (shards, "shards")):
        train(config, data=str(data), output=tmp_path / name)
        evals.append([r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r.get("event") == "eval"][-1])
    folder, sharded = ({k: v for k, v in e.items() if k.startswith(("product_", "room"))} for e in evals)
    assert folder and folder == pytest.approx(sharded, abs=1e-9)


def test_bad_shard_folders_are_one_line_and_exit_2(shards, tiny_catalog, tmp_path):
    result = run_cli("data", "prepare", "--data", str(shards), "--output", str(tmp_path / "again"))
    assert result.returncode == 2 and "is already a shard folder: train on it" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("data", "prepare", "--data", str(tiny_catalog), "--output", str(shards))
    assert result.returncode == 2 and "already exists" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("data", "prepare", "--data", str(tiny_catalog), "--output", str(tmp_path / "new"), "--max-side", "8")
    assert result.returncode == 2 and "--max-side" in result.stderr and "Traceback" not in result.stderr
    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    (broken / "shard-000000.tar").unlink()
    result = run_cli("train", "--config", "tiny", "--data", str(broken), "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and "missing" in result.stderr and "Traceback" not in result.stderr
    (broken / "shard-000001.tar").write_bytes(b"not a tar file")
    shutil.copy(shards / "shard-000000.tar", broken)
    result = run_cli("train", "--config", "tiny", "--data", str(broken), "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and "damaged" in result.stderr and "Traceback" not in result.stderr


def test_prepare_counts_the_images_it_wrote_and_refuses_a_catalog_without_any(tmp_path, capsys):
    for i in range(2):
        Image.new("RGB", (40, 30), (100 * i, 50, 0)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    rows = [{"image": "0.jpg", "caption": "a red chair"}, {"image": "1.jpg", "caption": "a green chair"},
            {"image": "missing.jpg", "caption": "gone"}, {"image": "bad.jpg", "caption": "broken"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["data", "prepare", "--data", str(manifest), "--output", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("2 images written")  # 3 rows were read; one image of them is corrupt
    warned = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warned) == 2 and all(line.startswith("vislang data prepare: warning: ") for line in warned), err
    assert "UserWarning" not in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["data", "prepare", "--data", str(empty), "--output", str(tmp_path / "none")]) == 2
    assert "holds no usable images" in capsys.readouterr().err and not (tmp_path / "none").exists()
    (tmp_path / "afile").write_text("")
    assert main(["data", "prepare", "--data", str(manifest), "--output", str(tmp_path / "afile" / "sub")]) == 2
    assert f"cannot create {tmp_path / 'afile' / 'sub'}" in capsys.readouterr().err
