"""Tokenizers from the libraries that own them: Hugging Face for hf towers, open_clip's BPE for its towers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class Tokenizer:
    """Callable text -> (input_ids, attention_mask), padded to the longest text, cut at max_length."""

    def __init__(self, kind: str, source: str, max_length: int) -> None:
        self.kind, self.max_length = kind, max_length
        if kind == "hf":
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(source)
        elif kind == "open_clip":
            import open_clip

            self._tok = open_clip.get_tokenizer(source, context_length=max_length)
        else:
            raise ValueError(f"unknown tokenizer kind {kind!r}")

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "hf":
            out = self._tok(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            return out["input_ids"], out["attention_mask"]
        ids = self._tok(list(texts))
        return ids, (ids != 0).long()

    def save(self, folder: Path) -> None:
        """Write the files needed to rebuild this tokenizer offline (open_clip's BPE ships in its package)."""
        if self.kind == "hf":
            self._tok.save_pretrained(folder)


def create_tokenizer(text_cfg: dict[str, Any], source: str) -> Tokenizer:
    return Tokenizer(text_cfg["kind"], source, text_cfg["max_length"])
