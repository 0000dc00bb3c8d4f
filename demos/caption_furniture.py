"""Caption test-split furniture photos and write a grid: the generated text and the catalog text under each photo.

    python demos/caption_furniture.py --model runs/demo [--n 24] [--beams 3] [--out runs/captions.png]

Needs a model trained with the caption decoder (model.decoder.enabled=true).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import vislang
from vislang.cli import run_for_user
from vislang.data import find_data_dir, read_catalog
from vislang.viz import result_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo", help="run or checkpoint folder")
    parser.add_argument("--data", help="catalog folder (default: VISLANG_DATA, then ../shared/data/ikea)")
    parser.add_argument("--n", type=int, default=24, help="how many test products")
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--per-row", type=int, default=6)
    parser.add_argument("--out", default="runs/captions.png")
    args = parser.parse_args()

    model = vislang.load(args.model)
    products = read_catalog(find_data_dir(args.data)).select("test", "product")
    picks = random.Random(0).sample(products, min(args.n, len(products)))
    captions = model.caption([item.image for item in picks], num_beams=args.beams)
    for item, caption in zip(picks, captions):
        print(f"{item.id}: generated {caption!r} | catalog {item.caption!r}")
    rows = []
    for start in range(0, len(picks), args.per_row):
        chunk = list(zip(picks, captions))[start : start + args.per_row]
        hits = [(item.image, f"gen: {caption} | cat: {item.caption}", False) for item, caption in chunk]
        rows.append((f"test products {start + 1}-{start + len(chunk)}", hits))
    # two texts under each photo: room for both in full
    print(f"grid: {result_grid(rows, Path(args.out), thumb=160, label_lines=7)}")


if __name__ == "__main__":
    sys.exit(run_for_user(Path(__file__).name, main))
