"""The demo scripts as a user runs them: a grid on success, one line and exit 2 on a known failure."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vislang.checkpoint import save_checkpoint
from vislang.config import load_config
from vislang.models import create_model

pytestmark = pytest.mark.slow  # trains a model or spawns processes: `pytest -m 'not slow'` leaves it out

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def no_decoder(tmp_path_factory) -> Path:
    """An untrained tiny model saved without a caption decoder (as the CPU recipe trains)."""
    config = load_config(ROOT / "configs" / "tiny.yaml", ["model.decoder.enabled=false", "model.image.image_size=32"])
    model, tokenizer = create_model(config["model"])
    return save_checkpoint(tmp_path_factory.mktemp("model") / "ck", 1, model, tokenizer, config)


def run_demo(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "demos" / name), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _one_error_line(result: subprocess.CompletedProcess, name: str, words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]  # progress bars aside
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: ") and words in lines[0], lines


def test_search_demo_writes_its_grid(no_decoder, tiny_catalog, tmp_path):
    out = tmp_path / "grid.png"
    result = run_demo("search_products.py", "--model", str(no_decoder), "--data", str(tiny_catalog), "--k", "3",
                      "--out", str(out), "a red chair")
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0 and "'a red chair':" in result.stdout
    rooms = run_demo("search_products.py", "--model", str(no_decoder), "--data", str(tiny_catalog), "--k", "2", "--kind", "room",
                     "--reranker", "--out", str(tmp_path / "rooms.png"), "a room with a bed")
    assert rooms.returncode == 0, rooms.stderr


def test_shop_the_room_demo_writes_its_grid(no_decoder, tiny_catalog, tmp_path):
    out = tmp_path / "rooms.png"
    result = run_demo("shop_the_room.py", "--model", str(no_decoder), "--data", str(tiny_catalog), "--rooms", "2", "--k", "3",
                      "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "products in the top 3" in line]
    assert len(lines) == 2 and out.stat().st_size > 0
    missing = run_demo("shop_the_room.py", "--model", str(tmp_path / "nowhere"), "--data", str(tiny_catalog))
    _one_error_line(missing, "shop_the_room.py", "no checkpoint at")


def test_caption_demo_without_a_decoder_is_one_clear_line(no_decoder, tiny_catalog, tmp_path):
    result = run_demo("caption_furniture.py", "--model", str(no_decoder), "--data", str(tiny_catalog),
                      "--out", str(tmp_path / "captions.png"))
    _one_error_line(result, "caption_furniture.py", "model.decoder.enabled=true")
    assert not (tmp_path / "captions.png").exists()


def test_room_demo_on_a_missing_index_is_one_clear_line(tmp_path):
    result = run_demo("search_rooms.py", "--index", str(tmp_path / "nowhere"))
    _one_error_line(result, "search_rooms.py", "no index at")


def test_grid_labels_run_to_the_lines_asked_for(tmp_path):
    # the caption demo shows the generated and the catalog text under each photo: both must be
    # drawn in full, not cut after the three lines a search label needs
    from PIL import Image

    from vislang.viz import result_grid

    label = "gen: hemnes chest of 8 drawers, black-brown | cat: HEMNES Chest of 8 drawers, White stain, light brown"
    inked_below_third_line = []
    for lines in (3, 7):
        out = result_grid([("query", [(tmp_path / "missing.jpg", label, False)])], tmp_path / f"grid{lines}.png",
                          thumb=140, label_lines=lines)
        image = Image.open(out).convert("L")
        x0, y0 = 220, 6 + 140 + 2 + 13 * 3  # left of the hit, below its label's third line
        below = image.crop((x0, y0, x0 + 140, image.height))
        inked_below_third_line.append(below.height > 0 and min(below.getdata()) < 128)
    assert inked_below_third_line == [False, True]
