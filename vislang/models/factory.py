"""One entry point that builds the model, its tokenizer and its image preprocessing from a config."""
from __future__ import annotations

from typing import Any

from .model import VisLangModel
from .tokenizer import Tokenizer, create_tokenizer


def create_model(model_cfg: dict[str, Any]) -> tuple[VisLangModel, Tokenizer]:
    """Build the model and its tokenizer from the `model` section of a run config."""
    model = VisLangModel(model_cfg)
    source = getattr(model.text_tower, "source", model_cfg["text"]["name"])
    return model, create_tokenizer(model_cfg["text"], source)
