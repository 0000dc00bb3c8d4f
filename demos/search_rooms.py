"""Room search: natural room queries against the search index, top rooms shown as an image grid.

    python demos/search_rooms.py --index runs/index          # an index from `vislang index build`
    python demos/search_rooms.py --model runs/cpu-final      # or index the catalog's rooms now
    python demos/search_rooms.py --index runs/index "a small hallway with hooks" --k 5
    python demos/search_rooms.py --index runs/index --reranker   # plus the query-time re-ranker's terms

Writes a grid (one row per query, its top rooms with title and score) and prints the top titles.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import vislang
from vislang.cli import run_for_user
from vislang.data import find_data_dir, read_catalog
from vislang.search import Index
from vislang.viz import result_grid

DEFAULT_QUERIES = [
    "a bright scandinavian kitchen",
    "a cosy children's bedroom with a bunk bed",
    "a living room with a grey sofa and plants",
    "a small home office with a white desk",
    "a dining room with a wooden table for six",
    "a calm white bedroom",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries", nargs="*", default=DEFAULT_QUERIES)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", help="index folder (from `vislang index build`)")
    source.add_argument("--model", help="run or checkpoint folder: index the catalog's rooms in memory")
    parser.add_argument("--data", help="catalog folder for --model (default: VISLANG_DATA, then ../shared/data/ikea)")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--rerank", type=int, help="re-score the top N with the matching head (models trained with it)")
    parser.add_argument("--reranker", action="store_true",
                        help="re-score the top hits with the re-ranker (the indexed training rooms' titles and categories)")
    parser.add_argument("--out", default="runs/search_rooms.png")
    args = parser.parse_args()

    if args.index:
        index = Index.load(args.index)
    else:
        index = Index.build(vislang.load(args.model), read_catalog(find_data_dir(args.data)), kinds="rooms")
    rows = []
    for query, hits in zip(args.queries, index.search(texts=args.queries, k=args.k, kind="room", rerank=args.rerank,
                                                      reranker=args.reranker)):
        print(f"{query!r}: " + " | ".join(hit.title for hit in hits[:3]))
        rows.append((query, [(Path(hit.image), f"{hit.title} ({hit.score:.2f})", False) for hit in hits]))
    print(f"grid: {result_grid(rows, Path(args.out))}")


if __name__ == "__main__":
    sys.exit(run_for_user(Path(__file__).name, main))
