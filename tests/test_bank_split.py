"""The image bank decoded by two torchrun processes (gloo, CPU), each taking its own shards, is
the bank one process decodes; an unreadable image is skipped and counted once, by rank 0."""
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislang.data import pixels, read_catalog
from vislang.data.images import load_image
from vislang.data.pixels import augment, build_image_bank, decode_groups, square
from vislang.data.shards import write_shards

HELPER = Path(__file__).resolve().parent / "bank_ranks.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
SIZE = 16


def _corrupt_first_image(shard: Path) -> str:
    """Overwrite the bytes of the shard's first image in place (the tar stays valid); its member name."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.isfile() and not m.name.endswith(".json"))
    with open(shard, "r+b") as handle:
        handle.seek(member.offset_data)
        handle.write(b"\0" * member.size)
    return member.name


@pytest.fixture(scope="module")
def run(tiny_catalog, tmp_path_factory):
    """Shards of 8 images with one unreadable image in shard 1 (rank 1's); the bank built by one
    process, then by two under torchrun."""
    root = tmp_path_factory.mktemp("bank_split")
    shards = write_shards(read_catalog(tiny_catalog), root / "shards", shard_size=8)
    broken = _corrupt_first_image(shards / "shard-000001.tar")
    paths = [item.image for item in read_catalog(shards).items]
    with pytest.warns(UserWarning, match="skipped 1 unreadable") as caught:
        single = build_image_bank(paths, SIZE, root / "one", workers=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    reports = root / "reports"
    reports.mkdir()
    result = subprocess.run([*TORCHRUN, str(HELPER), str(shards), str(SIZE), str(root / "two"), str(reports)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    by_rank = {r["rank"]: r for r in (json.loads(p.read_text()) for p in reports.glob("rank*.json"))}
    single_warnings = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    return {"paths": paths, "broken": broken, "single": single, "single_warnings": single_warnings, "ranks": by_rank,
            "cache": root / "two"}


@pytest.mark.slow
def test_two_ranks_decode_their_own_shards_into_the_single_process_bank(run):
    paths, (bank, ok), ranks = run["paths"], run["single"], run["ranks"]
    assert sorted(ranks) == [0, 1]
    shards = list(dict.fromkeys(path.parent for path in paths))
    assert len(shards) == 7
    for rank in (0, 1):
        own = [i for i, path in enumerate(paths) if shards.index(path.parent) % 2 == rank]
        assert ranks[rank]["decoded"] == own, rank
    # the single-process bank is each image decoded on its own, in order
    assert len(ok) == len(paths) - 1 and bank.shape == (len(ok), 3, SIZE, SIZE)
    for row, index in enumerate(ok):
        expected = square(load_image(paths[index], min_side=SIZE), SIZE).transpose(2, 0, 1)
        assert np.array_equal(bank[row].numpy(), expected), index
    # every rank got the whole bank, and rank 0 left the bank and its index, no pieces
    digest = hashlib.sha1(bank.numpy().tobytes()).hexdigest()
    assert [ranks[r]["sha1"] for r in (0, 1)] == [digest, digest]
    assert [ranks[r]["ok"] for r in (0, 1)] == [ok, ok]
    assert sorted(p.suffix for p in run["cache"].iterdir()) == [".npy", ".npy"]
    again, ok_again = build_image_bank(paths, SIZE, run["cache"])  # the two ranks' cache file
    assert ok_again == ok and torch.equal(again, bank)


@pytest.mark.slow
def test_an_unreadable_image_in_one_ranks_shard_is_skipped_and_counted_once(run):
    paths, (_, ok), ranks = run["paths"], run["single"], run["ranks"]
    broken = next(i for i, path in enumerate(paths) if path.parent.name == "shard-000001.tar"
                  and path.name == run["broken"])
    assert broken in ranks[1]["decoded"] and broken not in ranks[0]["decoded"] and broken not in ok
    assert len(run["single_warnings"]) == 1

    def without_detail(warnings):  # PIL's detail names an in-memory buffer by its address
        return [w.partition(" (")[0] for w in warnings]

    assert without_detail(ranks[0]["warnings"]) == without_detail(run["single_warnings"]) and ranks[1]["warnings"] == []
    assert "skipped 1 unreadable" in ranks[0]["warnings"][0] and run["broken"] in ranks[0]["warnings"][0]


def test_decode_groups_are_shards_and_runs_of_plain_files(monkeypatch):
    monkeypatch.setattr(pixels, "GROUP_SIZE", 2)
    paths = [Path(p) for p in ("s/a.tar/x.jpg", "p/1.jpg", "s/a.tar/y.jpg", "s/b.tar/z.jpg", "p/2.jpg", "p/3.jpg")]
    assert decode_groups(paths) == [[0, 2], [1, 4], [3], [5]]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory maps (Linux)")
def test_the_bank_is_a_copy_on_write_map_that_augment_leaves_alone(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        Image.new("RGB", (40, 30), (i * 80, 20, 200)).save(path)
    bank, _ = build_image_bank(paths, 16, tmp_path / "cache", workers=1)
    (bank_file,) = (p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".idx.npy"))
    assert str(bank_file) in Path("/proc/self/maps").read_text()
    before, on_disk = bank.clone(), bank_file.read_bytes()
    augment(bank, [0, 1, 2], 12, (0.5, 1.0), True, torch.Generator().manual_seed(0))
    assert torch.equal(bank, before)
    bank[0].zero_()  # a write stays in this process's copy of the page
    assert bank_file.read_bytes() == on_disk
