"""One entry point that builds the model, its tokenizer and its image preprocessing from a config."""
from __future__ import annotations

import copy
from typing import Any, Sequence

from .model import VisLangModel
from .text_tower import resolve_text_source
from .tokenizer import Tokenizer, create_tokenizer
from .vocab import caption_token_ids


def create_model(model_cfg: dict[str, Any], captions: Sequence[str] | None = None) -> tuple[VisLangModel, Tokenizer]:
    """Build the model and its tokenizer from the `model` section of a run config.

    The tokenizer comes first: the caption decoder's vocabulary and special ids are its. A decoder
    with `vocab: captions` predicts only the tokens of `captions` (the training captions); their
    ids are written into the model's config (`model.cfg`), which checkpoints save, so a reload
    needs no captions.
    """
    text = model_cfg["text"]
    source = resolve_text_source(text["name"]) if text["kind"] == "hf" else text["name"]
    tokenizer = create_tokenizer(text, source)
    decoder = model_cfg["decoder"]
    builds_vocab = decoder["enabled"] and decoder["vocab"] == "captions" and not decoder["token_ids"]
    if builds_vocab and not captions:
        raise ValueError("model.decoder.vocab=captions needs the training captions to build its vocabulary")
    if builds_vocab:
        model_cfg = copy.deepcopy(model_cfg)
        model_cfg["decoder"]["token_ids"] = caption_token_ids(tokenizer(list(captions))[0].tolist(), tokenizer.special_ids)
    return VisLangModel(model_cfg, tokenizer.special_ids), tokenizer
