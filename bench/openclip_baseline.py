"""The anchor comparison: open_clip's own training script on the same data, model size and clock.

What it measures: how well a plain CLIP recipe does on the IKEA catalog when it gets exactly
what vislang's CPU recipe (vislang/configs/ikea-cpu.yaml) gets: the train split, a model of the
same size (the recipe's timm image tower at the recipe's image size; a 6-layer, width-384
text transformer with a 48-token context; 256-d embeddings), the recipe's batch size, learning
rate, weight decay, warmup, AdamW betas and gradient clipping, and the same wall-clock budget on
the same machine. Unlike vislang it trains both towers from scratch (no open_clip weights are
available offline), uses open_clip's own data pipeline (every text of every train item is one
row of a CSV, images decoded on the fly by one worker) and plain image-text contrastive loss
(no room-product links, no colour histogram). The trained model is then scored by vislang's
own evaluation (`vislang.eval.evaluate`), so its numbers sit next to vislang's in one table.

How the budget is kept: open_clip_train has no time limit and its cosine schedule is fixed by
the length of the run, so a short calibration run (a few steps, through the same
`open_clip_train.main`) times a step, and the run is planned as the number of steps that fits
in the budget. Epochs are too coarse for that (on two CPU cores one pass over the 6.5k train
pairs takes about as long as the whole budget), so open_clip_train gets one epoch over a CSV
holding exactly that many batches: whole passes over the train pairs, then a random part of
one more. The JSON reports `epochs` as passes over the pairs (a fraction), and `train_wall_s`
as the real run's wall time, start of `open_clip_train.main` to its return (which includes
model creation and the checkpoint save). There is no hard stop: a run that overshoots the
budget (the machine got busier after calibrating) says so, and `train_wall_s` shows by how
much. The calibration time is reported apart (`calibration_s`), as vislang's budget also
leaves out its setup (decoding images, caching text features). Warmup is the recipe's, but at
most a fifth of the planned steps.

Usage (from the repository root):
    python bench/openclip_baseline.py [--data DIR] [--output runs/openclip-baseline]
        [--minutes 17] [--image-model NAME] [--image-size N] [--split test] [--json]

Needs the `bench` extra: braceexpand, webdataset and pandas (imported by open_clip_train).
The output folder holds pairs.csv (the train split), train-stream.csv (what the run was fed),
the model config, open_clip's logs and checkpoint (with optimizer state) under openclip/train,
and result.json. Rerunning into the same folder replaces that earlier run.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import platform
import random
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the vislang of this checkout

import numpy as np
import open_clip
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import vislang
from vislang.config import load_config
from vislang.data import Catalog, Item, find_data_dir, read_catalog
from vislang.data.images import load_image
from vislang.eval import evaluate

MODEL_NAME = "vislang-baseline"
FALLBACK_IMAGE_MODEL = "convnext_atto"  # when the recipe's image tower is not a timm model
RECIPE = Path(vislang.__file__).resolve().parent / "configs" / "ikea-cpu.yaml"
CALIBRATION_STEPS = 4  # timed steps; a step is 10-20 s on two busy cores, so few
PLAN_FRACTION = 0.97  # plan to end a little inside the budget: steps vary on a shared machine
MAX_WARMUP_FRACTION = 0.2  # a short run must not spend most of its steps warming up


# ---------------------------------------------------------------- recipe, model and data


@dataclass(frozen=True)
class Recipe:
    """The settings taken from vislang's CPU recipe, so both runs train under the same terms."""

    image_model: str  # a timm model name
    image_size: int
    embed_dim: int
    context_length: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float | None
    max_minutes: float
    seed: int


def read_recipe(path: Path = RECIPE) -> Recipe:
    config = load_config(path)
    model, train = config["model"], config["train"]
    image = model["image"]
    return Recipe(
        image_model=str(image["name"]) if image["kind"] == "timm" else FALLBACK_IMAGE_MODEL,
        image_size=int(image["image_size"]),
        embed_dim=int(model["embed_dim"]),
        context_length=int(model["text"]["max_length"]),
        batch_size=int(train["batch_size"]),
        lr=float(train["lr"]),
        weight_decay=float(train["weight_decay"]),
        warmup_steps=int(train["warmup_steps"]),
        grad_clip=float(train["grad_clip"]) if train.get("grad_clip") else None,
        max_minutes=float(train["max_minutes"] or 17),
        seed=int(config["seed"]),
    )


def model_config(recipe: Recipe) -> dict[str, Any]:
    """An open_clip model config the size of vislang's CPU recipe (both towers from scratch).

    The image tower is the recipe's timm model; the text tower is a transformer the shape of
    MiniLM-L6 (6 layers, width 384), with open_clip's own 49408-token vocabulary.
    """
    return {
        "embed_dim": recipe.embed_dim,
        "vision_cfg": {
            "timm_model_name": recipe.image_model,
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "linear",
            "image_size": recipe.image_size,
        },
        "text_cfg": {
            "context_length": recipe.context_length,
            "vocab_size": 49408,
            "width": 384,
            "heads": 6,
            "layers": 6,
        },
    }


def register_model(folder: Path, config: dict[str, Any]) -> Path:
    """Write the config as MODEL_NAME.json and add it to open_clip's registry (this process)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{MODEL_NAME}.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    open_clip.add_model_config(path)
    if MODEL_NAME not in open_clip.list_models():
        raise RuntimeError(f"open_clip did not register {MODEL_NAME} from {path}")
    return path


def training_pairs(items: Sequence[Item]) -> list[tuple[str, str]]:
    """One (image path, text) pair for every text of every item."""
    return [(str(item.image.resolve()), text) for item in items for text in item.texts]


def write_pairs(pairs: Sequence[tuple[str, str]], path: Path) -> Path:
    """A tab-separated CSV with columns filepath and title, as open_clip_train's CsvDataset reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(["filepath", "title"])
        writer.writerows(pairs)
    return path


# ---------------------------------------------------------------- running open_clip_train


@dataclass
class StepClock:
    """Records the time of every optimizer step taken in this process while attached."""

    stamps: list[float] = field(default_factory=list)

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.stamps.append(time.time())

    @contextmanager
    def attached(self) -> Iterator[StepClock]:
        handle = register_optimizer_step_post_hook(self)
        try:
            yield self
        finally:
            handle.remove()


class _QuietConsole(logging.Filter):
    """Drop open_clip_train's dump of the model and of every argument (params.txt keeps the latter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "\n" not in message and not message.startswith("  ")


@contextmanager
def open_clip_logging() -> Iterator[None]:
    """open_clip_train adds root log handlers and sets every logger to INFO on each call; undo both."""
    handlers = list(logging.root.handlers)
    loggers = logging.root.manager.loggerDict
    levels = {name: logger.level for name, logger in loggers.items() if isinstance(logger, logging.Logger)}
    root_level = logging.root.level
    quiet = _QuietConsole()
    logging.root.addFilter(quiet)
    try:
        yield
    finally:
        logging.root.removeFilter(quiet)
        for handler in [h for h in logging.root.handlers if h not in handlers]:
            logging.root.removeHandler(handler)
            handler.close()
        logging.root.setLevel(root_level)
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))


def train_argv(csv_path: Path, logs: Path, name: str, recipe: Recipe, warmup_steps: int) -> list[str]:
    """open_clip_train's arguments: one epoch over `csv_path` with vislang's recipe settings."""
    argv = [
        "--train-data", str(csv_path),
        "--dataset-type", "csv",
        "--csv-separator", "\t",
        "--csv-img-key", "filepath",
        "--csv-caption-key", "title",
        "--model", MODEL_NAME,
        "--batch-size", str(recipe.batch_size),
        "--lr", str(recipe.lr),
        "--wd", str(recipe.weight_decay),
        "--beta1", "0.9",
        "--beta2", "0.98",  # vislang's AdamW betas
        "--warmup", str(warmup_steps),
        "--epochs", "1",
        "--workers", "1",
        "--device", "cpu",
        "--precision", "fp32",
        "--seed", str(recipe.seed),
        "--logs", str(logs),
        "--name", name,
        "--save-frequency", "1",
        "--log-every-n-steps", "5",
        "--report-to", "",
    ]
    if recipe.grad_clip:
        argv += ["--grad-clip-norm", str(recipe.grad_clip)]
    return argv


def run_open_clip_train(argv: list[str], clock: StepClock) -> float:
    """Call open_clip_train.main in this process; returns its wall time in seconds."""
    from open_clip_train.main import main as open_clip_train_main  # needs braceexpand, webdataset, pandas

    start = time.time()
    with open_clip_logging(), clock.attached():
        status = open_clip_train_main(argv)
    if status not in (None, 0):
        raise RuntimeError(f"open_clip_train.main failed (returned {status}); see its log above")
    return time.time() - start


def latest_checkpoint(folder: Path) -> Path | None:
    """The highest-epoch epoch_N.pt in `folder`, or None."""
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.pt") if (m := re.fullmatch(r"epoch_(\d+)\.pt", p.name))]
    return max(found)[1] if found else None


def fresh_run_dir(logs: Path, name: str) -> Path:
    """open_clip_train refuses an existing experiment folder: clear this script's earlier one."""
    run_dir = logs / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return run_dir


# ---------------------------------------------------------------- calibration and planning


@dataclass(frozen=True)
class Calibration:
    step_s: float  # one training step
    overhead_s: float  # start-up to the first step, and the end (checkpoint save) after the last
    wall_s: float


def calibrate(
    pairs: Sequence[tuple[str, str]], folder: Path, recipe: Recipe, steps: int = CALIBRATION_STEPS
) -> Calibration:
    """Time `steps` training steps of open_clip_train on a random sample of the pairs."""
    sample = random.Random(recipe.seed).sample(list(pairs), min(len(pairs), steps * recipe.batch_size))
    csv_path = write_pairs(sample, folder / "calibration.csv")
    fresh_run_dir(folder, "calibration")
    clock = StepClock()
    start = time.time()
    wall_s = run_open_clip_train(train_argv(csv_path, folder, "calibration", recipe, recipe.warmup_steps), clock)
    shutil.rmtree(folder / "calibration", ignore_errors=True)
    csv_path.unlink(missing_ok=True)
    if len(clock.stamps) < 2:
        raise RuntimeError("calibration ran fewer than two steps; is the train split that small?")
    step_s = float(np.mean(np.diff(clock.stamps)))
    overhead_s = (clock.stamps[0] - start - step_s) + (start + wall_s - clock.stamps[-1])
    return Calibration(step_s, max(0.0, overhead_s), wall_s)


def plan_steps(budget_s: float, calibration: Calibration) -> int:
    """The most training steps whose estimated time, with the overhead, fits in the budget."""
    return max(1, math.floor((budget_s * PLAN_FRACTION - calibration.overhead_s) / calibration.step_s))


def sample_stream(pairs: Sequence[tuple[str, str]], rows: int, seed: int) -> list[tuple[str, str]]:
    """`rows` pairs: whole passes over `pairs`, then a random part of one more pass."""
    rng = random.Random(seed)
    passes, rest = divmod(rows, len(pairs))
    return list(pairs) * passes + rng.sample(list(pairs), rest)


# ---------------------------------------------------------------- scoring with vislang's evaluation


class OpenClipEncoder:
    """An open_clip model behind the encode_images / encode_texts interface vislang.eval expects."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        model, _, preprocess = open_clip.create_model_and_transforms(
            MODEL_NAME, pretrained=str(checkpoint), device=device
        )
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(MODEL_NAME)
        self.device = device
        config = open_clip.get_model_config(MODEL_NAME)
        self.dim = int(config["embed_dim"])
        self.image_size = int(config["vision_cfg"]["image_size"])

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.inference_mode()
    def encode_images(self, items: Sequence, batch_size: int = 64) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            pixels = torch.stack([self.preprocess(load_image(item, min_side=self.image_size)) for item in batch])
            out.append(self.model.encode_image(pixels.to(self.device), normalize=True).float().cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size]))
            out.append(self.model.encode_text(tokens.to(self.device), normalize=True).float().cpu().numpy())
        return np.concatenate(out)


# ---------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), cpu"
    )


def print_table(result: dict[str, Any]) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None, recipe: Recipe) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="catalog folder or manifest (default: vislang's usual search)")
    parser.add_argument("--output", default="runs/openclip-baseline", help="output folder")
    parser.add_argument("--minutes", type=float, default=recipe.max_minutes,
                        help=f"training budget (default {recipe.max_minutes:g}, the recipe's)")
    parser.add_argument("--image-model", default=recipe.image_model,
                        help=f"timm image tower (default {recipe.image_model}, the recipe's)")
    parser.add_argument("--image-size", type=int, default=recipe.image_size,
                        help=f"image size (default {recipe.image_size}, the recipe's)")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    recipe = read_recipe()
    args = parse_args(argv, recipe)
    recipe = replace(recipe, image_model=args.image_model, image_size=args.image_size)
    output = Path(args.output)
    logs = output / "openclip"
    budget_s = args.minutes * 60

    print("[1/5] catalog and model config", flush=True)
    catalog: Catalog = read_catalog(find_data_dir(args.data))
    train_items = catalog.select("train")
    pairs = training_pairs(train_items)
    if len(pairs) < recipe.batch_size:
        raise SystemExit(f"only {len(pairs)} training pairs; need at least one batch of {recipe.batch_size}")
    write_pairs(pairs, output / "pairs.csv")
    register_model(output, model_config(recipe))
    print(f"  {len(pairs)} (image, text) pairs from {len(train_items)} train items -> {output / 'pairs.csv'}")

    print(f"[2/5] calibration: {CALIBRATION_STEPS} steps of open_clip_train", flush=True)
    calibration = calibrate(pairs, logs, recipe)
    steps = plan_steps(budget_s, calibration)
    warmup = min(recipe.warmup_steps, max(1, int(steps * MAX_WARMUP_FRACTION)))
    epochs = steps * recipe.batch_size / len(pairs)
    print(f"  {calibration.step_s:.2f} s a step, {calibration.overhead_s:.1f} s start-up and save "
          f"-> {steps} steps ({epochs:.2f} passes over the pairs) in {args.minutes:g} minutes", flush=True)

    print(f"[3/5] training {MODEL_NAME}: {steps} steps, warmup {warmup}", flush=True)
    stream_csv = write_pairs(sample_stream(pairs, steps * recipe.batch_size, recipe.seed), output / "train-stream.csv")
    run_dir = fresh_run_dir(logs, "train")
    load_before = os.getloadavg()[0]  # the machine is shared: how busy it was when training began
    clock = StepClock()
    train_wall_s = run_open_clip_train(train_argv(stream_csv, logs, "train", recipe, warmup), clock)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise RuntimeError(f"open_clip_train saved no checkpoint under {run_dir / 'checkpoints'}")
    over = train_wall_s - budget_s
    note = f", {over:.1f} s OVER the budget" if over > 0 else ""
    print(f"  {len(clock.stamps)} steps in {train_wall_s:.0f} s{note}; checkpoint {checkpoint}", flush=True)

    print(f"[4/5] scoring on the {args.split} split with vislang.eval.evaluate", flush=True)
    encoder = OpenClipEncoder(checkpoint)
    tick = time.time()
    metrics = evaluate(encoder, catalog, args.split)
    eval_s = time.time() - tick

    result: dict[str, Any] = {
        "machine": machine(),
        "load_avg_1m": round(load_before, 2),
        "model": f"open_clip {MODEL_NAME}: timm {recipe.image_model} @ {recipe.image_size}px "
                 f"+ 6-layer width-384 text transformer, embed {recipe.embed_dim}, from scratch",
        "params": encoder.params,
        "train_wall_s": round(train_wall_s, 1),
        "budget_s": round(budget_s, 1),
        "epochs": round(len(clock.stamps) * recipe.batch_size / len(pairs), 3),
        "steps": len(clock.stamps),
        "warmup_steps": warmup,
        "batch_size": recipe.batch_size,
        "image_size": recipe.image_size,
        "train_pairs": len(pairs),
        "calibration_s": round(calibration.wall_s, 1),
        "step_s": round(calibration.step_s, 2),
        "eval_s": round(eval_s, 1),
        "checkpoint": str(checkpoint),
        "split": args.split,
        **metrics,
    }
    (output / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[5/5] result -> {output / 'result.json'}")
    print_table(result)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
