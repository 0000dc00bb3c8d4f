"""One entry point that builds the model, its tokenizer and its image preprocessing from a config."""
from __future__ import annotations

from typing import Any

from .model import VisLangModel
from .text_tower import resolve_text_source
from .tokenizer import Tokenizer, create_tokenizer


def create_model(model_cfg: dict[str, Any]) -> tuple[VisLangModel, Tokenizer]:
    """Build the model and its tokenizer from the `model` section of a run config.

    The tokenizer comes first: the caption decoder's vocabulary and special ids are its.
    """
    text = model_cfg["text"]
    source = resolve_text_source(text["name"]) if text["kind"] == "hf" else text["name"]
    tokenizer = create_tokenizer(text, source)
    return VisLangModel(model_cfg, tokenizer.special_ids), tokenizer
