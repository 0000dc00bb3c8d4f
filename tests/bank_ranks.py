"""Run under torchrun by tests/test_bank_split.py: builds the image bank of a shard folder as the
training loop does, and writes OUT/rank{R}.json (the ranks share stdout, where lines could mix):
the images this rank decoded itself (read from its piece file at the first barrier, before rank 0
joins and removes the pieces), the warnings it raised, and the bank it got.

Usage: bank_ranks.py SHARD_FOLDER SIZE CACHE_DIR OUT
"""
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from vislang.data import read_catalog
from vislang.data.pixels import build_image_bank
from vislang.train import distributed


def main(shards: Path, size: int, cache: Path, out: Path) -> None:
    ranks = distributed.setup("cpu")
    decoded: list[list[int]] = []

    def barrier() -> None:
        if not decoded:
            (piece,) = cache.glob(f"bank-*.piece{ranks.rank}of{ranks.world}.npz")
            with np.load(piece) as part:
                decoded.append(sorted(part["indices"].tolist() + part["failed"].tolist()))
        ranks.barrier()

    paths = [item.image for item in read_catalog(shards).items]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bank, ok = build_image_bank(paths, size, cache, workers=1, rank=ranks.rank, world=ranks.world, barrier=barrier)
    report = {"rank": ranks.rank, "decoded": decoded[0], "ok": ok,
              "sha1": hashlib.sha1(bank.numpy().tobytes()).hexdigest(),
              "warnings": [str(w.message) for w in caught if "unreadable" in str(w.message)]}
    (out / f"rank{ranks.rank}.json").write_text(json.dumps(report))
    distributed.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
