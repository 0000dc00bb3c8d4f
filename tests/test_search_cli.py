"""`vislang index build/add`, `search` and `goes-with` as a user meets them: output, JSON, one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vislang.cli.main import main
from vislang.config import load_config
from vislang.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.image.image_size=32", "train.batch_size=12", "train.epochs=2", "train.checkpoint_every=100"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # trains a model or spawns processes: `pytest -m 'not slow'` leaves it out


@pytest.fixture(scope="module")
def built(tiny_catalog, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny trained checkpoint and an index of the tiny catalog built by the CLI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("search")
    checkpoint = train(load_config(ROOT / "configs" / "tiny.yaml", TINY), data=str(tiny_catalog), output=folder / "run")
    code = main(["index", "build", "--checkpoint", str(checkpoint), "--data", str(tiny_catalog), "--output", str(folder / "index"),
                 "--device", "cpu"])
    torch.set_num_threads(threads)
    assert code == 0
    return checkpoint, folder / "index"


def run(capsys, *argv: str) -> tuple[int, str, list[str]]:
    """Exit code, stdout, and the stderr lines that are not progress bars."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line and "img/s]" not in line]
    return code, out, lines


def test_build_summary_and_text_search(built, capsys):
    _, index = built
    code, out, _ = run(capsys, "search", "--index", str(index), "a red chair", "--k", "4")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 4 and lines[0].split()[0] == "1"
    code, out, _ = run(capsys, "search", "--index", str(index), "a red chair", "--k", "3", "--kind", "product", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and result["query"] == "a red chair" and len(result["results"]) == 3
    for hit in result["results"]:
        assert set(hit) == {"id", "kind", "score", "rerank_score", "title", "type", "color", "image"}
        assert hit["kind"] == "product" and Path(hit["image"]).is_file() and hit["rerank_score"] is None
    scores = [hit["score"] for hit in result["results"]]
    assert scores == sorted(scores, reverse=True)


def test_photo_photo_plus_text_and_rerank(built, tiny_catalog, capsys):
    _, index = built
    photo = str(tiny_catalog / "images" / "products" / "000.000.00.jpg")
    code, out, _ = run(capsys, "search", "--index", str(index), "--image", photo, "--k", "1", "--json")
    assert code == 0 and json.loads(out)["results"][0]["id"] == "000.000.00"
    code, out, _ = run(capsys, "search", "--index", str(index), "in blue", "--image", photo, "--text-weight", "0.5", "--json")
    assert code == 0 and json.loads(out)["image"] == photo and len(json.loads(out)["results"]) == 10
    code, out, _ = run(capsys, "search", "--index", str(index), "a red chair", "--rerank", "5", "--k", "5", "--json")
    reranked = json.loads(out)["results"]
    # each hit's score is the matching head's probability for that photo and the query
    import vislang

    expected = vislang.load(built[0], device="cpu").match([hit["image"] for hit in reranked], ["a red chair"] * len(reranked))
    assert code == 0 and [hit["rerank_score"] for hit in reranked] == pytest.approx(expected.tolist(), abs=1e-5)
    assert [h["rerank_score"] for h in reranked] == sorted((h["rerank_score"] for h in reranked), reverse=True)


def test_goes_with_by_id_and_by_photo(built, tiny_catalog, capsys):
    _, index = built
    code, out, _ = run(capsys, "goes-with", "--index", str(index), "000.000.00", "--k", "3", "--json")
    result = json.loads(out)
    assert code == 0 and 0 < len(result["products"]) <= 3 and result["rooms"]
    assert all(hit["rooms"] and hit["id"] != "000.000.00" for hit in result["products"])
    photo = str(tiny_catalog / "images" / "products" / "000.000.00.jpg")
    code, out, _ = run(capsys, "goes-with", "--index", str(index), photo, "--k", "3")
    assert code == 0 and "goes with:" in out
    code, out, _ = run(capsys, "goes-with", "--index", str(index), "room00", "--k", "3", "--json")  # a room: from its photo
    assert code == 0 and json.loads(out)["products"]


def test_search_and_eval_with_the_reranker(built, tiny_catalog, capsys):
    checkpoint, index = built
    plain = json.loads(run(capsys, "search", "--index", str(index), "a room with a bed", "--kind", "room", "--json")[1])
    code, out, _ = run(capsys, "search", "--index", str(index), "a room with a bed", "--kind", "room", "--reranker", "--json")
    reranked = json.loads(out)
    assert code == 0 and reranked["reranker"] and not plain["reranker"]
    assert [h["score"] for h in reranked["results"]] != [h["score"] for h in plain["results"]]
    assert "re-ranker needs a text" in one_line_error(capsys, "search", "--index", str(index), "--image",
                                                      str(tiny_catalog / "images" / "rooms" / "room00.jpg"), "--reranker")
    # eval: the embeddings' figures as they are, the re-ranked ones apart, each with its interval
    code, out, _ = run(capsys, "eval", "--checkpoint", str(checkpoint), "--data", str(tiny_catalog), "--device", "cpu", "--json")
    pure = json.loads(out)
    code, out, _ = run(capsys, "eval", "--checkpoint", str(checkpoint), "--data", str(tiny_catalog), "--device", "cpu", "--json",
                       "--reranker")
    both = json.loads(out)
    assert code == 0 and not any(name.startswith("reranked_") for name in pure)
    assert {name: value for name, value in both.items() if not name.startswith("reranked_") and name != "ci95"} == \
        {name: value for name, value in pure.items() if name != "ci95"}
    assert {"reranked_product_text2image_r1", "reranked_product_image2text_r10", "reranked_room_title2image_r5"} <= set(both)
    assert {name for name in both if name.startswith("reranked_")} <= set(both["ci95"])
    code, out, _ = run(capsys, "eval", "--checkpoint", str(checkpoint), "--data", str(tiny_catalog), "--device", "cpu",
                       "--reranker")
    assert code == 0 and "re-ranked at query time" in out


def test_add_image_files_then_find_them(built, tiny_catalog, tmp_path, capsys):
    checkpoint, index = built
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    new = tmp_path / "my-new-lamp.png"
    shutil.copy(tiny_catalog / "images" / "products" / "005.000.00.jpg", new)  # a new file of an existing look
    code, out, _ = run(capsys, "index", "add", "--index", str(copy), str(new), "--kind", "product")
    assert code == 0 and "added 1 images" in out
    code, out, _ = run(capsys, "search", "--index", str(copy), "--image", str(new), "--k", "2", "--json")
    assert {hit["id"] for hit in json.loads(out)["results"]} == {"my-new-lamp", "005.000.00"}
    code, out, _ = run(capsys, "index", "add", "--index", str(copy), "--data", str(tiny_catalog), "--checkpoint", str(checkpoint))
    assert code == 0 and "added 0 images" in out  # the catalog is in already
    code, out, err = run(capsys, "index", "add", "--index", str(copy), str(new), "--kind", "product")
    assert code == 0 and "added 0 images" in out
    assert err == [f"vislang index add: warning: {new} not added: the index already holds a product with id 'my-new-lamp' "
                   "(rename the file to add it as another item)"]
    assert "no items of kind sofa (the items are of kind product, room)" in one_line_error(
        capsys, "index", "add", "--index", str(copy), "--data", str(tiny_catalog), "--kinds", "sofa")


def one_line_error(capsys, *argv: str) -> str:
    code, _, lines = run(capsys, *argv)
    assert code == 2, lines
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(built, tiny_catalog, tmp_path, capsys):
    checkpoint, index = built
    assert "no index at" in one_line_error(capsys, "search", "--index", str(tmp_path / "nowhere"), "a chair")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(index, corrupt)
    manifest = json.loads((corrupt / "manifest.json").read_text())
    (corrupt / manifest["parts"]["product"]["index_file"]).write_bytes(b"\0" * 64)
    assert "corrupt index" in one_line_error(capsys, "search", "--index", str(corrupt), "a chair")
    (corrupt / "manifest.json").write_text("{not json")
    assert "not valid JSON" in one_line_error(capsys, "search", "--index", str(corrupt), "a chair")
    assert "empty query" in one_line_error(capsys, "search", "--index", str(index), "")
    assert "empty query" in one_line_error(capsys, "search", "--index", str(index))
    not_image = tmp_path / "photo.jpg"
    not_image.write_text("this is text, not a JPEG")
    assert "not a readable image" in one_line_error(capsys, "search", "--index", str(index), "--image", str(not_image))
    assert "unknown id" in one_line_error(capsys, "goes-with", "--index", str(index), "123.456.78")
    assert "unknown kind" in one_line_error(capsys, "search", "--index", str(index), "a chair", "--kind", "sofa")
    assert "needs a text" in one_line_error(capsys, "search", "--index", str(index), "--image", str(tiny_catalog / "images" / "products" / "000.000.00.jpg"), "--rerank", "3")
    assert "--overwrite" in one_line_error(capsys, "index", "build", "--checkpoint", str(checkpoint), "--data", str(tiny_catalog), "--output", str(index))
    shards = tmp_path / "shards"  # another tool's manifest.json: --overwrite must not replace it
    shards.mkdir()
    (shards / "manifest.json").write_text('{"format": "vislang-shards"}')
    assert "not a vislang index" in one_line_error(capsys, "index", "build", "--checkpoint", str(checkpoint), "--data", str(tiny_catalog),
                                                   "--output", str(shards), "--overwrite")
    assert (shards / "manifest.json").read_text() == '{"format": "vislang-shards"}'
    assert "needs at least 64 vectors" in one_line_error(
        capsys, "index", "build", "--checkpoint", str(checkpoint), "--data", str(tiny_catalog), "--output", str(tmp_path / "x"),
        "--factory", "IVF64,Flat")


def test_the_installed_command_prints_no_traceback(built):
    _, index = built
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "vislang", "goes-with", "--index", str(index), "no-such-product"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = "vislang goes-with: error: unknown id 'no-such-product': no product or room in the index has it, and no file has that name"
    assert result.stderr.strip().splitlines() == [expected]
