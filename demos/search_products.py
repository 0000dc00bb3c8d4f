"""Text -> image search over the IKEA test products and rooms with a trained model.

    python demos/search_products.py --model runs/demo "a black office chair" "white bookcase"
    python demos/search_products.py --model runs/demo --kind room --reranker "a cosy bedroom"

Ranks by cosine, as `vislang eval` does; --reranker adds the query-time re-ranker's terms (the
training items' look-alike captions and room categories), as `vislang eval --reranker` does.
Writes a grid image (one row per query, its top hits) and prints the top captions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import vislang
from vislang.cli import run_for_user
from vislang.data import find_data_dir, read_catalog
from vislang.eval.retrieval import catalog_reranker
from vislang.viz import result_grid

DEFAULT_QUERIES = ["a black office chair", "a white bookcase", "a wooden dining table", "a pendant lamp", "a grey sofa"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries", nargs="*", default=DEFAULT_QUERIES)
    parser.add_argument("--model", default="runs/demo", help="run or checkpoint folder")
    parser.add_argument("--data", help="catalog folder (default: VISLANG_DATA, then ../shared/data/ikea)")
    parser.add_argument("--kind", choices=["product", "room"], default="product")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--reranker", action="store_true", help="add the re-ranker's terms to the cosine")
    parser.add_argument("--out", default="runs/search_products.png")
    args = parser.parse_args()

    model = vislang.load(args.model)
    catalog = read_catalog(find_data_dir(args.data))
    gallery = catalog.select("test", args.kind)
    images = model.encode_images([item.image for item in gallery])
    texts = model.encode_texts(args.queries)
    scores = texts @ images.T
    if args.reranker:
        scores = catalog_reranker(model, catalog).text_to_image(scores, texts, images, args.kind,
                                                                image_keys=[item.image for item in gallery])
    rows = []
    for query, row in zip(args.queries, scores):
        top = np.argsort(-row)[: args.k]
        print(f"{query!r}: " + " | ".join(gallery[i].caption for i in top))
        rows.append((query, [(gallery[i].image, gallery[i].caption, False) for i in top]))
    print(f"grid: {result_grid(rows, Path(args.out))}")


if __name__ == "__main__":
    sys.exit(run_for_user(Path(__file__).name, main))
