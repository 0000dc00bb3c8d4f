"""Atomic files: a save interrupted at its fault point (an exception, or SIGKILL of the process)
leaves the previous version loadable and no half file under the real name, for every kind of save.

The fault hook (`vislang.atomic.fault_hook`) is called by each writer after its data is written
and before the rename that publishes it (and, in a save of several files, between them)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislang import atomic
from vislang.checkpoint import find_checkpoint, load_weights, save_checkpoint
from vislang.config import load_config
from vislang.data import read_catalog
from vislang.data.pixels import build_image_bank
from vislang.data.shards import write_shards
from vislang.models import create_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny.yaml"


class Fault(RuntimeError):
    pass


def fail_at(kind: str, nth: int = 1):
    """A fault hook raising at the `nth` fault point of `kind` (and counting the points it saw)."""
    seen: list[tuple[str, Path]] = []

    def hook(where: str, path: Path) -> None:
        seen.append((where, path))
        if where == kind and sum(1 for k, _ in seen if k == kind) == nth:
            raise Fault(f"injected fault in a {kind} save at {path}")
    hook.seen = seen
    return hook


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp-*"))


# ---------------------------------------------------------------- the helper itself


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    atomic.write_text_atomic(target, '{"version": 1}')
    monkeypatch.setattr(atomic, "fault_hook", fail_at("metadata"))
    with pytest.raises(Fault):
        atomic.write_text_atomic(target, '{"version": 2}')
    assert json.loads(target.read_text()) == {"version": 1}
    assert _temporaries(tmp_path) == []  # the temporary is removed on an error
    monkeypatch.setattr(atomic, "fault_hook", None)
    atomic.write_text_atomic(target, '{"version": 2}')
    assert json.loads(target.read_text()) == {"version": 2}


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from vislang import atomic
atomic.fault_hook = lambda kind, path: os.kill(os.getpid(), signal.SIGKILL)
atomic.write_text_atomic(Path(sys.argv[1]), "new " * 100000)
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_a_writer_killed_mid_write_leaves_the_old_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    result = _python(KILLED_WRITER, str(target))
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert target.read_text() == "old"
    left = _temporaries(tmp_path)
    assert len(left) == 1 and left[0].startswith(".manifest.json.tmp-")  # the dead writer's, whole but unpublished
    atomic.write_text_atomic(target, "newer")
    assert target.read_text() == "newer" and _temporaries(tmp_path) == []


def test_atomic_folder_replaces_a_folder_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with atomic.atomic_folder(target, "shards") as tmp:
        (tmp / "a").write_text("1")
    monkeypatch.setattr(atomic, "fault_hook", fail_at("shards"))
    with pytest.raises(Fault):
        with atomic.atomic_folder(target, "shards") as tmp:
            (tmp / "a").write_text("2")
            (tmp / "b").write_text("2")
    assert _visible(target) == ["a"] and (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def tiny_model():
    config = load_config(CONFIG, ["model.matching.enabled=false", "model.decoder.enabled=false"])
    torch.manual_seed(0)
    model, tokenizer = create_model(config["model"])
    return model, tokenizer, config


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("nth", [1, 2])  # 1: half-way, the weights written and nothing else; 2: before the rename
def test_a_checkpoint_save_that_fails_keeps_the_previous_checkpoint(tiny_model, tmp_path, monkeypatch, nth):
    model, tokenizer, config = tiny_model
    first = save_checkpoint(tmp_path, 4, model, tokenizer, config, ({"x": torch.ones(2)}, {"step": 4}))
    saved = _weights(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    monkeypatch.setattr(atomic, "fault_hook", fail_at("checkpoint", nth))
    with pytest.raises(Fault):
        save_checkpoint(tmp_path, 8, model, tokenizer, config, ({"x": torch.ones(2)}, {"step": 8}))
    assert find_checkpoint(tmp_path) == first
    assert _visible(tmp_path / "checkpoints") == ["latest", "step-0000004"]
    fresh, _ = create_model(config["model"])
    load_weights(fresh, first)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())
    assert _temporaries(tmp_path) == []


KILLED_CHECKPOINT = """
import os, signal, sys
from pathlib import Path
import torch
from vislang import atomic
from vislang.checkpoint import save_checkpoint
from vislang.config import load_config
from vislang.models import create_model

config = load_config(sys.argv[1], ["model.matching.enabled=false", "model.decoder.enabled=false"])
model, tokenizer = create_model(config["model"])
run = Path(sys.argv[2])
save_checkpoint(run, 4, model, tokenizer, config, ({"x": torch.ones(2)}, {"step": 4}))
points = []
def kill_at_second_point(kind, path):
    points.append(kind)
    if len(points) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
atomic.fault_hook = kill_at_second_point
save_checkpoint(run, 8, model, tokenizer, config, ({"x": torch.ones(2)}, {"step": 8}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", [1, 2, 3])  # weights written / folder whole, not renamed / renamed, `latest` not moved
def test_a_run_killed_while_saving_a_checkpoint_resumes_from_the_previous_one(tmp_path, point):
    run = tmp_path / "run"
    result = _python(KILLED_CHECKPOINT, str(CONFIG), str(run), str(point))
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    found = find_checkpoint(run)
    assert found.name == "step-0000004"
    assert (found / "model.safetensors").is_file() and (found / "config.yaml").is_file()
    assert json.loads((found / "trainer_state.json").read_text()) == {"step": 4}
    assert _visible(run / "checkpoints") == ["latest", "step-0000004"] + (["step-0000008"] if point == 3 else [])


def test_latest_naming_a_missing_folder_falls_back_to_the_newest_whole_one(tiny_model, tmp_path):
    model, tokenizer, config = tiny_model
    save_checkpoint(tmp_path, 4, model, tokenizer, config)
    (tmp_path / "checkpoints" / "latest").write_text("step-0000012")
    with pytest.warns(UserWarning, match="names step-0000012, which is not a whole checkpoint; using step-0000004"):
        assert find_checkpoint(tmp_path).name == "step-0000004"


# ---------------------------------------------------------------- shards, the image bank, metadata


def test_a_shard_write_that_fails_leaves_no_output_and_can_be_run_again(tiny_catalog, tmp_path, monkeypatch):
    catalog = read_catalog(tiny_catalog)
    for kind in ("manifest", "shards"):  # the shards written but not their manifest; the folder not renamed
        monkeypatch.setattr(atomic, "fault_hook", fail_at(kind))
        with pytest.raises(Fault):
            write_shards(catalog, tmp_path / "shards", shard_size=20)
        assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(atomic, "fault_hook", None)
    out = write_shards(catalog, tmp_path / "shards", shard_size=20)
    assert len(read_catalog(out)) == len(catalog)


def test_an_image_bank_build_that_fails_is_rebuilt_whole(tmp_path, monkeypatch):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (24, 20), (60 * i, 10, 10)).save(paths[-1])
    for nth in (1, 2, 3):  # the piece written; the bank written, its index not; the index written, not renamed
        monkeypatch.setattr(atomic, "fault_hook", fail_at("bank", nth))
        with pytest.raises(Fault):
            build_image_bank(paths, 16, cache_dir=tmp_path / "cache", workers=1)
        left = _visible(tmp_path / "cache")
        assert not any(name.endswith(".idx.npy") for name in left), left  # never counted as cached
    monkeypatch.setattr(atomic, "fault_hook", None)
    bank, ok = build_image_bank(paths, 16, cache_dir=tmp_path / "cache", workers=1)
    assert ok == [0, 1, 2, 3] and bank.shape == (4, 3, 16, 16)
    assert int(bank[3, 0].float().mean()) == pytest.approx(180, abs=2)
    assert _temporaries(tmp_path / "cache") == []


# ---------------------------------------------------------------- the search index


@pytest.fixture(scope="module")
def untrained_model(untrained_checkpoint):
    import vislang

    return vislang.load(untrained_checkpoint, device="cpu")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind, nth", [("index", 1), ("index", 3), ("manifest", 1)])  # a part, another part, the commit
def test_an_index_save_that_fails_leaves_the_previous_index_loadable(untrained_model, tiny_catalog, tmp_path, monkeypatch,
                                                                     kind, nth):
    from vislang.search import Index

    catalog = read_catalog(tiny_catalog)
    products = [item for item in catalog if item.kind == "product"]
    index = Index.build(untrained_model, products[:20], progress=False, gpu=False)
    index.save(tmp_path / "index")
    before = sorted(p.name for p in (tmp_path / "index").iterdir())
    index.add(catalog, progress=False)  # rooms and the other products: two parts to save now
    monkeypatch.setattr(atomic, "fault_hook", fail_at(kind, nth))
    with pytest.raises(Fault):
        index.save(tmp_path / "index", overwrite=True)
    monkeypatch.setattr(atomic, "fault_hook", None)
    reloaded = Index.load(tmp_path / "index", model=untrained_model)
    assert len(reloaded) == 20 and reloaded.search(texts="a red chair", k=3)[0]
    index.save(tmp_path / "index", overwrite=True)  # the next save goes through and tidies up
    assert len(Index.load(tmp_path / "index")) == len(catalog)
    assert _temporaries(tmp_path / "index") == []
    assert len(before) == 3 and len(list((tmp_path / "index").iterdir())) == 5  # manifest + 2 parts x 2 files
