"""`vislang` subcommands. Known failures print one line and exit 2; Ctrl-C exits 130."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from .. import __version__

PROJECT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= low (argparse reports a bad one with the usage, exit 2)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text}")
        return value
    parse.__name__ = "whole number"  # argparse names it on a ValueError: "invalid whole number value: 'abc'"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def word(text: str) -> str:
    """An argparse type: a non-empty string (an empty one is more likely a shell slip than a choice)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def kind_names(text: str) -> str:
    """An argparse type: comma-separated kinds with at least one name ("," alone would mean every kind)."""
    if not any(name.strip() for name in text.split(",")):
        raise argparse.ArgumentTypeError(f"must name at least one kind, got {text!r}")
    return text


def config_path(name: str) -> Path:
    """A config file path, or a bare name ("ikea-cpu") looked up in ./configs and the installed package."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name if path.suffix in (".yaml", ".yml") else f"{name}.yaml"
    for folder in (Path.cwd() / "configs", PROJECT_CONFIGS, PACKAGED_CONFIGS):
        if (folder / stem).is_file():
            return folder / stem
    raise CliError(f"config not found: {name} (give a YAML path or one of: tiny, ikea-cpu, ikea-gpu)")


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..train import train

    config = load_config(config_path(args.config), args.overrides)
    final = train(config, data=args.data, output=args.output, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(f"final checkpoint: {final}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..api import load
    from ..eval.report import evaluate_model_with_intervals, format_report
    from ..ranking import RerankSettings

    model = load(args.checkpoint, device=args.device)
    catalog = _catalog_for(model, args.data)
    if not catalog.select(args.split):
        splits = sorted({item.split for item in catalog})
        raise CliError(f"the catalog at {catalog.root.resolve()} has no {args.split} items to evaluate (it has {', '.join(splits)}); choose --split")
    metrics, intervals = evaluate_model_with_intervals(model, catalog, args.split,
                                                       reranker=RerankSettings() if args.reranker else None)
    if args.json:  # each metric at the top level (re-ranked ones prefixed reranked_); "ci95": its 95% interval [low, high]
        ci95 = {name: [low, high] for name, (low, high) in intervals.items()}
        print(json.dumps({"checkpoint": str(model.checkpoint), "split": args.split, **metrics, "ci95": ci95}))
    else:
        print(f"{model.checkpoint} on {args.split}:\n{format_report(metrics, catalog, args.split, intervals)}")
    return 0


def _exists(path: str | None) -> bool:
    return bool(path) and Path(path).exists()


def _catalog_for(model, data: str | None):
    """--data, else the catalog the model was trained on while it is still there, else the usual search."""
    from ..data import find_data_dir, read_catalog

    trained_on = model.config["data"].get("path")
    return read_catalog(find_data_dir(data or (trained_on if _exists(trained_on) else None)))


def cmd_caption(args: argparse.Namespace) -> int:
    from ..api import load
    from ..data.images import ImageLoadError, SkipCounter, load_image

    paths, images, skipped = [], [], SkipCounter()
    for path in args.images:  # an unreadable one is skipped and counted, as in a catalog
        try:
            images.append(load_image(path))
            paths.append(path)
        except ImageLoadError as err:
            skipped.add(err)
    skipped.warn()
    if not images:
        raise CliError(f"nothing to caption: none of the {len(args.images)} images could be read "
                       f"(first: {skipped.skipped[0]})")
    model = load(args.checkpoint, device=args.device)
    captions = model.caption(images, max_length=args.max_length, num_beams=args.beams)
    if args.json:
        print(json.dumps([{"image": path, "caption": caption} for path, caption in zip(paths, captions)]))
    else:
        for path, caption in zip(paths, captions):
            print(f"{path}\t{caption}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(config_path(args.config), args.data, Path(args.output), args.retrain, args.overrides)
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from ..data.download import download_ikea

    dest = download_ikea(Path(args.to) if args.to else None, seed=args.seed)
    found = "vislang finds it there by itself; or " if not args.to else ""
    print(f"IKEA catalog written to {dest}; {found}use it with --data {dest} or VISLANG_DATA={dest}")
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    from ..api import load
    from ..search import Index
    from ..search.index import check_writable

    check_writable(Path(args.output), args.overwrite)  # before minutes of embedding, not after
    model = load(args.checkpoint, device=args.device)
    index = Index.build(model, _catalog_for(model, args.data), kinds=args.kinds, factory=args.factory,
                        target_recall=args.target_recall, batch_size=args.batch_size)
    index.save(args.output, overwrite=args.overwrite)
    print(f"{args.output}: {index.summary()}")
    return 0


def cmd_index_add(args: argparse.Namespace) -> int:
    from ..data.catalog import Item
    from ..data.images import load_image

    index = _open_index(args)
    loose = []
    for path in map(Path, args.images):
        load_image(path)  # images named one by one must all be readable: stop at the first that is not
        if index.record(args.kind, path.stem) is not None:  # ids are file names: one already indexed is kept as it is
            warnings.warn(f"{path} not added: the index already holds a {args.kind} with id {path.stem!r} "
                          "(rename the file to add it as another item)")
        # no split: not a training item, so its file name never serves as a look-alike caption
        loose.append(Item(path.stem, args.kind, path, (path.stem,), ""))
    added = index.add(loose) if loose else 0
    if args.data or not loose:
        added += index.add(_catalog_for(index.model, args.data), kinds=args.kinds)
    if added:
        index.save(args.index, overwrite=True)
    print(f"added {added} images; {args.index}: {index.summary()}")
    return 0


def _open_index(args: argparse.Namespace):
    """The index of --index, with the model of --checkpoint or --device when given."""
    from ..search.index import open_index

    return open_index(args.index, args.checkpoint, args.device)


def cmd_search(args: argparse.Namespace) -> int:
    from ..search.hits import search_json

    if args.text_weight is not None and not (args.image and args.query):
        raise CliError("--text-weight weighs a text query against a photo query: give both, or leave it out")
    index = _open_index(args)
    text = args.query if args.query or not args.image else None  # "" beside --image: a photo query
    weight = {} if args.text_weight is None else {"text_weight": args.text_weight}
    hits = index.search(texts=text, images=args.image, k=args.k, kind=args.kind, rerank=args.rerank,
                        reranker=args.reranker, **weight)[0]
    if args.json:
        print(json.dumps(search_json(hits, text, args.image, args.kind, args.k, args.rerank, args.reranker)))
        return 0
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:3d}  {_hit_line(hit)}")
    return 0


def _hit_line(hit) -> str:
    match = f"  match {hit.rerank_score:.3f}" if hit.rerank_score is not None else ""
    details = ", ".join(str(v) for v in (hit.type, hit.color) if v and str(v) not in hit.title)  # a product title has both
    rooms = f"  rooms: {' '.join(hit.rooms)}" if hit.rooms else ""  # goes-with's evidence
    return (f"{hit.score:.4f}{match}  {hit.kind:<7}  {hit.id:<14}  {hit.title}" + (f" ({details})" if details else "")
            + f"  {hit.image}{rooms}")


def cmd_goes_with(args: argparse.Namespace) -> int:
    index = _open_index(args)
    result = index.goes_with(args.query, k=args.k, rooms=args.rooms)
    if args.json:
        print(json.dumps(result.to_json(args.query)))
        return 0
    print(f"rooms showing products like {args.query}:")
    for hit in result.rooms:
        print(f"     {hit.score:.4f}  {hit.id}  {hit.title}  (shows {result.anchors[hit.id]})")
    print("goes with:")
    for rank, hit in enumerate(result.products, 1):
        print(f"{rank:3d}  {_hit_line(hit)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.run import ServeSettings, serve

    batch = {} if args.max_batch is None else {"max_batch": args.max_batch}
    serve(ServeSettings(args.index, args.checkpoint, args.device, **batch), args.host, args.port, args.workers)
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from ..data import find_data_dir, read_catalog
    from ..data.shards import is_shard_folder, read_shard_manifest, write_shards

    source = find_data_dir(args.data)
    if is_shard_folder(source):
        raise CliError(f"{source} is already a shard folder: train on it with --data {source}, or prepare from the "
                       "catalog folder or manifest it was made from")
    catalog = read_catalog(source)
    output = write_shards(catalog, Path(args.output), max_side=args.max_side, shard_size=args.shard_size)
    size = sum(p.stat().st_size for p in output.iterdir()) / 2**20
    written = read_shard_manifest(output)["count"]  # fewer than the catalog's rows when some images are unreadable
    print(f"{written} images written to {output} ({size:.1f} MiB); train on them with --data {output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vislang", description="Vision-language pretraining and search for furniture catalogs.")
    parser.add_argument("--version", action="version", version=f"vislang {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a config")
    p.add_argument("--config", required=True, help="YAML path or name (tiny, ikea-cpu, ikea-gpu)")
    p.add_argument("--data", help="catalog folder or manifest (default: $VISLANG_DATA, then ../shared/data/ikea)")
    p.add_argument("--output", default="runs/latest", help="run folder (default: runs/latest)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-3")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="retrieval metrics of a checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    p.add_argument("--data", help="catalog folder (default: the one the model was trained on, then the usual search)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--reranker", action="store_true",
                   help="also report the text<->image figures with the query-time re-ranker (the training items' "
                        "look-alike captions and room categories), apart from the embeddings' own")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("caption", help="describe furniture photos with the caption decoder")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--beams", type=at_least(1), default=3, help="beam width (1: greedy)")
    p.add_argument("--max-length", type=at_least(2), default=32, help="most tokens per caption, its start token included")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("demo", help="train the CPU recipe, evaluate it and write a results grid")
    p.add_argument("--config", default="ikea-cpu")
    p.add_argument("--data", help="catalog folder or manifest (default: $VISLANG_DATA, then ../shared/data/ikea, then "
                                  "the cache folder, where the IKEA dataset is downloaded when none of them has it)")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--retrain", action="store_true", help="train again even if --output already holds a model (the earlier run is renamed OUTPUT.previous)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("data", help="datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    d = data_sub.add_parser("download", help="download a public dataset and convert it")
    d.add_argument("name", choices=["ikea"])
    d.add_argument("--to", help="folder to create (default: the cache folder, $VISLANG_CACHE/data/ikea or "
                                "~/.cache/vislang/data/ikea, where vislang looks for it)")
    d.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    d.set_defaults(func=cmd_data_download)
    d = data_sub.add_parser("prepare", help="write a catalog as resized webdataset tar shards")
    d.add_argument("--data", help="catalog folder or manifest (default: $VISLANG_DATA, then ../shared/data/ikea)")
    d.add_argument("--output", required=True, help="shard folder to create")
    d.add_argument("--max-side", type=int, default=384, help="longer image side in pixels (smaller images are kept as they are)")
    d.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    d.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("index", help="build or extend a search index of a catalog's images")
    index_sub = p.add_subparsers(dest="index_command", required=True)
    b = index_sub.add_parser("build", help="embed every image and write a FAISS index folder")
    b.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    b.add_argument("--data", help="catalog folder or manifest (default: the one the model was trained on, then the usual search)")
    b.add_argument("--output", required=True, help="index folder to write")
    b.add_argument("--kinds", type=kind_names, help="comma-separated kinds to index, e.g. rooms,products (default: all)")
    b.add_argument("--factory", default="auto",
                   help="auto (exact when small, a tuned IVF when large), or a faiss factory string: Flat, IVF1024,Flat, HNSW32, ...")
    b.add_argument("--target-recall", type=fraction, default=0.95, help="recall@10 vs exact search that tuning aims at")
    b.add_argument("--batch-size", type=at_least(1), default=64, help="images per forward pass")
    b.add_argument("--overwrite", action="store_true", help="replace an index already in --output")
    b.add_argument("--device", default=None, help="model device: cpu or cuda (default: cuda when available)")
    b.set_defaults(func=cmd_index_build)
    a = index_sub.add_parser("add", help="add new images (a catalog's new items, or image files) to an index")
    a.add_argument("--index", required=True, help="index folder")
    a.add_argument("images", nargs="*", metavar="IMAGE", help="image files to add (id: the file name without suffix)")
    a.add_argument("--kind", type=word, default="product", help="kind of the IMAGE files (default: product)")
    a.add_argument("--data", help="catalog whose items not yet in the index are added (default without IMAGEs: the model's)")
    a.add_argument("--kinds", type=kind_names, help="comma-separated kinds of catalog items to add (default: all)")
    a.add_argument("--checkpoint", help="the index's checkpoint, if it moved (another checkpoint is refused)")
    a.add_argument("--device", default=None)
    a.set_defaults(func=cmd_index_add)

    p = sub.add_parser("search", help="search an index by text, by photo, or both")
    p.add_argument("--index", required=True, help="index folder")
    p.add_argument("query", nargs="?", help='text query, e.g. "a bright scandinavian kitchen"')
    p.add_argument("--image", help="photo query; with a text query too: like this photo, changed as the text says")
    p.add_argument("--k", type=at_least(1), default=10, help="results to show (default: 10)")
    p.add_argument("--kind", help="search only this kind: room or product (default: all)")
    p.add_argument("--rerank", type=at_least(1), metavar="N", help="re-score the top N with the matching head (text queries)")
    p.add_argument("--text-weight", type=fraction, help="weight of the text in a photo+text query, 0 to 1 (default: the API's)")
    p.add_argument("--reranker", action="store_true",
                   help="re-score the top hits with the query-time re-ranker: the indexed training items' look-alike "
                        "captions and room categories (needs a text query)")
    p.add_argument("--checkpoint", help="the index's checkpoint, if it moved")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("goes-with", help="products that go with a product: found in rooms with products like it")
    p.add_argument("--index", required=True, help="index folder with rooms and products")
    p.add_argument("query", metavar="PRODUCT_ID|IMAGE")
    p.add_argument("--k", type=at_least(1), default=10, help="products to show (default: 10)")
    p.add_argument("--rooms", type=at_least(1), default=10, help="rooms to draw them from (default: 10)")
    p.add_argument("--checkpoint", help="the index's checkpoint, if it moved")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_goes_with)

    p = sub.add_parser("serve", help="serve an index over HTTP: a search API and a web page at /")
    p.add_argument("--index", required=True, help="index folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=at_least(1), default=8000, help="port (default: 8000)")
    p.add_argument("--workers", type=at_least(1), default=1,
                   help="server processes, each with its own model and index (default: 1)")
    p.add_argument("--max-batch", type=at_least(1), metavar="N",
                   help="most waiting searches encoded together in one batch (default: 32; 1: one at a time)")
    p.add_argument("--checkpoint", help="the index's checkpoint, if it moved")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_serve)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user; anything else is a bug and keeps its traceback."""
    from ..api import MissingHeadError
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data.download import DownloadError, SourceLayoutError
    from ..data.catalog import ManifestError
    from ..data.images import ImageLoadError
    from ..data.locate import DataNotFoundError
    from ..devices import DeviceError
    from ..data.shards import ShardError
    from ..models.registry import PretrainedUnavailableError
    from ..search.errors import SearchError
    from ..train.step import TrainingDiverged

    return (CliError, MissingHeadError, CheckpointError, ConfigError, DataNotFoundError, DeviceError, DownloadError, SourceLayoutError,
            ImageLoadError, ManifestError, PretrainedUnavailableError, ShardError, SearchError, TrainingDiverged,
            FileExistsError, FileNotFoundError, NotADirectoryError)


def run_for_user(name: str, work: Callable[[], int | None]) -> int:
    """Run `work` and return its exit code: a known failure prints "NAME: error: message" and
    gives 2, Ctrl-C gives 130, anything else is a bug and keeps its traceback. The demos use it too."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(name, warnings.showwarning)
            return work() or 0
    except _user_errors() as err:
        from ..config import one_line  # a library's message may span lines (Hugging Face's do)

        print(f"{name}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def _one_line_warnings(name: str, show: Callable[..., None]) -> Callable[..., None]:
    """The package's own warnings (skipped rows, unreadable images) as "NAME: warning: message";
    a library's keep Python's format, whose source line helps whoever reports them."""
    package = Path(__file__).resolve().parents[1]

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        if Path(filename).resolve().is_relative_to(package):
            from tqdm import tqdm

            with tqdm.external_write_mode(file=sys.stderr):  # on a line of its own, not inside a progress bar
                print(f"{name}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    return show_warning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    words = [args.command, getattr(args, "data_command", None), getattr(args, "index_command", None)]
    return run_for_user(" ".join(["vislang", *filter(None, words)]), lambda: args.func(args))
