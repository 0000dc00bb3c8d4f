"""Shop the room: the products a test room photo finds among every product of the catalog.

    python demos/shop_the_room.py --model runs/demo
    python demos/shop_the_room.py --model runs/demo --rooms 4 --k 8

Each row is a test room's photo, then its top products as `vislang eval` ranks them (the room's
cosine with the product's photo plus its cosine with the product's caption); products the room
really shows are framed green. Prints how many of each room's products the top k holds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import vislang
from vislang.cli import run_for_user
from vislang.cli.main import CliError, at_least
from vislang.data import find_data_dir, read_catalog
from vislang.eval.retrieval import room_product_scores
from vislang.viz import result_grid


def _top(scores: np.ndarray, k: int) -> list[int]:
    return np.argsort(-scores, kind="stable")[:k].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo", help="run or checkpoint folder")
    parser.add_argument("--data", help="catalog folder (default: VISLANG_DATA, then ../shared/data/ikea)")
    parser.add_argument("--rooms", type=at_least(1), default=6, help="test rooms to show (default: 6)")
    parser.add_argument("--k", type=at_least(1), default=6, help="products per room (default: 6)")
    parser.add_argument("--out", default="runs/shop_the_room.png")
    args = parser.parse_args()

    model = vislang.load(args.model)
    catalog = read_catalog(find_data_dir(args.data))
    gallery = catalog.select(None, "product")  # the order of room_product_scores' columns
    products = {item.id for item in gallery}
    rooms = [room for room in catalog.select("test", "room") if products & set(room.links)][: args.rooms]
    if not rooms:
        raise CliError("the catalog has no test rooms that list its products")
    scores = room_product_scores(model, catalog, model.encode_images([room.image for room in rooms]))
    ranked = scores["photos"] + scores["captions"]
    rows = []
    for r, room in enumerate(rooms):
        truth = set(room.links)
        shown = _top(ranked[r], args.k)
        print(f"{room.caption!r}: {sum(gallery[i].id in truth for i in shown)} of its {len(truth)} products in the top {args.k}")
        hits = [(room.image, "the room", False)] + [(gallery[i].image, gallery[i].caption, gallery[i].id in truth) for i in shown]
        rows.append((room.caption, hits))
    print(f"grid: {result_grid(rows, Path(args.out))}")


if __name__ == "__main__":
    sys.exit(run_for_user(Path(__file__).name, main))
