"""`vislang` subcommands. Known failures print one line and exit 2; Ctrl-C exits 130."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import __version__

PROJECT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


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
    print(f"final checkpoint: {final}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..api import load
    from ..data import find_data_dir, read_catalog
    from ..eval.report import evaluate_model, format_report

    model = load(args.checkpoint, device=args.device)
    data = args.data or model.config["data"].get("path")
    catalog = read_catalog(find_data_dir(data if args.data or _exists(data) else None))
    metrics = evaluate_model(model, catalog, args.split)
    if args.json:
        print(json.dumps({"checkpoint": str(model.checkpoint), "split": args.split, **metrics}))
    else:
        print(f"{model.checkpoint} on {args.split}:\n{format_report(metrics, catalog, args.split)}")
    return 0


def _exists(path: str | None) -> bool:
    return bool(path) and Path(path).exists()


def cmd_caption(args: argparse.Namespace) -> int:
    from ..api import load
    from ..data.images import load_image

    images = [load_image(path) for path in args.images]  # a missing or corrupt file stops here, named
    model = load(args.checkpoint, device=args.device)
    captions = model.caption(images, max_length=args.max_length, num_beams=args.beams)
    if args.json:
        print(json.dumps([{"image": path, "caption": caption} for path, caption in zip(args.images, captions)]))
    else:
        for path, caption in zip(args.images, captions):
            print(f"{path}\t{caption}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(config_path(args.config), args.data, Path(args.output), args.retrain, args.overrides)
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from ..data.download import download_ikea

    dest = download_ikea(Path(args.to), seed=args.seed)
    print(f"IKEA catalog written to {dest}; use it with --data {dest} or VISLANG_DATA={dest}")
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
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("caption", help="describe furniture photos with the caption decoder")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--beams", type=int, default=3, help="beam width (1: greedy)")
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("demo", help="train the CPU recipe, evaluate it and write a results grid")
    p.add_argument("--config", default="ikea-cpu")
    p.add_argument("--data")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--retrain", action="store_true", help="train even if --output already holds a model")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("data", help="datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    d = data_sub.add_parser("download", help="download a public dataset and convert it")
    d.add_argument("name", choices=["ikea"])
    d.add_argument("--to", required=True, help="folder to create")
    d.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    d.set_defaults(func=cmd_data_download)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user; anything else is a bug and keeps its traceback."""
    from ..api import MissingHeadError
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data.download import DownloadError, SourceLayoutError
    from ..data.images import ImageLoadError
    from ..data.locate import DataNotFoundError
    from ..models.registry import PretrainedUnavailableError

    return (CliError, MissingHeadError, CheckpointError, ConfigError, DataNotFoundError, DownloadError, SourceLayoutError,
            ImageLoadError, PretrainedUnavailableError, FileExistsError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"vislang {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"vislang {args.command}: interrupted", file=sys.stderr)
        return 130
