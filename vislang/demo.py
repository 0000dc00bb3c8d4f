"""The main job in one call: train the CPU recipe on the catalog, evaluate it, show results."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

from .api import load
from .atomic import write_text_atomic
from .checkpoint import CheckpointError, find_checkpoint, saved_config
from .config import ConfigError, load_config
from .data import DataNotFoundError, find_data_dir, read_catalog
from .data.download import download_ikea
from .data.locate import ENV_VAR, downloaded_ikea_dir
from .eval.report import evaluate_model_with_intervals, format_report
from .eval.retrieval import EmbeddingCache, image_embeddings, skipping_unreadable
from .train import train
from .viz import result_grid, result_page

ROOM_QUERIES = ["a bright kitchen with white cabinets", "a cosy bedroom with a double bed", "a children's room with toys"]


def run_demo(config_path: Path, data: str | None, output: Path, retrain: bool = False, overrides: list[str] = ()) -> dict:
    data_dir = _data_or_download(data)
    config = load_config(config_path, overrides)  # a bad config fails before an earlier run is moved
    try:
        checkpoint = find_checkpoint(output)
    except CheckpointError:
        checkpoint = None
    unused = [] if checkpoint is None or retrain else _unused_overrides(overrides, config, checkpoint)
    if unused:
        raise ConfigError(f"{output} holds a model trained without {', '.join(unused)}: pass --retrain to train one "
                          f"with them (the earlier run is kept as {output.name}.previous), or choose another --output")
    moved = _move_aside(output) if retrain and output.exists() else None
    if moved is not None:
        print(f"moved the earlier run to {moved}")
        checkpoint = None
    if checkpoint is None:
        try:
            train(config, data=str(data_dir), output=output, resume=False)
        except BaseException:
            if moved is not None and not output.exists():  # failed before writing anything: put the run back
                moved.rename(output)
                print(f"training failed before it started; the earlier run is back in {output}")
            raise
    else:
        print(f"using the model already trained in {checkpoint} (pass --retrain to train again)")
    model = load(output)
    catalog = read_catalog(data_dir)
    cache: EmbeddingCache = {}  # image and caption embeddings, shared by the metrics and the example grid
    metrics, intervals = evaluate_model_with_intervals(model, catalog, "test", cache)
    print(f"\ntest split\n{format_report(metrics, catalog, 'test', intervals)}")
    write_text_atomic(output / "test_metrics.json", json.dumps({**metrics, "ci95": intervals}, indent=2))
    rows, _ = skipping_unreadable(lambda readable: _example_rows(model, readable, cache), catalog)
    grid = result_grid(rows, output / "results.png", label_lines=6)
    page = result_page("vislang demo: text -> image search on the test split", metrics, rows, grid, output / "results.html")
    print(f"\nresults grid: {grid}\nresults page: {page}")
    return metrics


def _data_or_download(data: str | None) -> Path:
    """The catalog to use; when none is named (no --data, no VISLANG_DATA) and none is found, the
    public IKEA dataset is downloaded into the cache folder first, where later commands find it.
    Offline, the download fails with one message saying how to get the data (exit 2)."""
    try:
        return find_data_dir(data)
    except DataNotFoundError:
        if data is not None or os.environ.get(ENV_VAR):
            raise  # a location the user named is missing: theirs to fix, not to fill
    print(f"no catalog found; downloading the public IKEA dataset into {downloaded_ikea_dir()} (non-commercial "
          "research licence; see README, 'The data')")
    return download_ikea()


def _unused_overrides(overrides: list[str], config: dict, checkpoint: Path) -> list[str]:
    """The key=value overrides whose value differs from the one the checkpoint was trained with."""
    saved = saved_config(checkpoint)

    def value_at(tree: dict, key: str):
        for part in key.split("."):
            tree = tree.get(part, _MISSING) if isinstance(tree, dict) else _MISSING
        return tree

    keys = [text.split("=", 1)[0].strip() for text in overrides]
    return [text for text, key in zip(overrides, keys) if value_at(config, key) != value_at(saved, key)]


_MISSING = object()


def _move_aside(output: Path) -> Path:
    """Renames a finished or interrupted run to OUTPUT.previous (.previous-2, ... if taken): a
    retrain never deletes a run a user may still want."""
    target, n = output.with_name(f"{output.name}.previous"), 1
    while target.exists():
        n += 1
        target = output.with_name(f"{output.name}.previous-{n}")
    output.rename(target)
    return target


def _example_rows(model, catalog, cache: EmbeddingCache, per_row: int = 5, n_products: int = 5, rerank_top: int = 20):
    """Result rows for the grid and page: product queries (catalog captions of test products) and
    room queries, ranked by cosine as `vislang eval` ranks. With a matching head, each product query
    gets a second row, its cosine top `rerank_top` re-ranked by the head, where each hit says the
    place it came from and the query says where the true item moved; with a decoder, each product
    photo's label adds the caption the model writes for it."""
    products, rooms = catalog.select("test", "product"), catalog.select(None, "room")
    picks = random.Random(0).sample(products, min(n_products, len(products)))
    rows = []
    for gallery, queries in ((products, [(p.caption, p) for p in picks]), (rooms, [(q, None) for q in ROOM_QUERIES])):
        if not gallery:
            continue
        images = image_embeddings(model, gallery, cache)
        ranking = model.encode_texts([q for q, _ in queries]) @ images.T  # cosine, as `vislang eval` ranks
        for (query, truth), scores in zip(queries, ranking):
            order = np.argsort(-scores, kind="stable")
            print(f"  {query!r}: " + " | ".join(gallery[i].caption for i in order[:3]))
            rows.append((query, gallery, order[:per_row], truth, {}))
            if truth is not None and model.has("matching"):
                shortlist = order[:rerank_top]
                match = model.match([gallery[i].image for i in shortlist], [query] * len(shortlist))
                reranked = shortlist[np.argsort(-match, kind="stable")]
                was = {int(i): place for place, i in enumerate(shortlist, 1)}
                moved = [f"#{was[int(i)]} -> #{place}" for place, i in enumerate(reranked, 1)
                         if gallery[i].caption == truth.caption]
                label = f"{query} (re-ranked by the matching head; true item {moved[0] if moved else f'not in the top {rerank_top}'})"
                rows.append((label, gallery, reranked[:per_row], truth, was))
    captions = _captions_of_shown(model, rows) if model.has("decoder") else {}
    out = []
    for query, gallery, shown, truth, was in rows:
        hits = []
        for place, i in enumerate(shown, 1):
            item = gallery[i]
            label = item.caption + (f" [was #{was[int(i)]}]" if was and was[int(i)] != place else "")
            if item.image in captions:
                label += f" | model says: {captions[item.image]}"
            hits.append((item.image, label, truth is not None and item.caption == truth.caption))
        out.append((query, hits))
    return out


def _captions_of_shown(model, rows) -> dict:
    """The decoder's caption (`model.caption`, default settings) of each product photo the rows show."""
    shown = list(dict.fromkeys(gallery[i].image for _, gallery, order, truth, _ in rows if truth is not None
                               for i in order))
    return dict(zip(shown, model.caption(shown)))
