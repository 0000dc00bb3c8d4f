"""Tokenizers from the libraries that own them: Hugging Face for hf towers, open_clip's BPE for its towers."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from .registry import unavailable
from .text_tower import OFFLINE_HINT, TEXT_TOWERS

# WordPiece splits "Black-brown" and "1.2" around the punctuation and decodes them as "black - brown"
# and "1. 2"; catalog text hyphenates words (401 IKEA captions), never spaces a dash between two
# words, and writes decimals whole, so both are rejoined.
_SPLIT_HYPHEN = re.compile(r"(?<=\w) - (?=\w)")
_SPLIT_DECIMAL = re.compile(r"(?<=\d)\. (?=\d)")


class Tokenizer:
    """Callable text -> (input_ids, attention_mask), padded to the longest text, cut at max_length."""

    def __init__(self, kind: str, source: str, max_length: int) -> None:
        self.kind, self.max_length = kind, max_length
        if kind == "hf":
            from transformers import AutoTokenizer

            try:
                self._tok = AutoTokenizer.from_pretrained(source)
            except OSError as err:
                raise unavailable(f"the tokenizer of {source!r}", err, OFFLINE_HINT) from err
        elif kind == "open_clip":
            import open_clip

            # The context length is the model config's: its positional table and attention mask are built for it.
            self._tok = open_clip.get_tokenizer(source)
        else:
            raise ConfigError(f"unknown text tower kind {kind!r}; choose from {sorted(TEXT_TOWERS)}")

    @property
    def special_ids(self) -> dict[str, int]:
        """vocab size and the ids the caption decoder starts, ends and pads with."""
        if self.kind == "hf":
            tok = self._tok
            bos = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
            eos = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
            return {"vocab_size": len(tok), "pad_id": tok.pad_token_id or 0, "bos_id": bos, "eos_id": eos}
        return {"vocab_size": self._tok.vocab_size, "pad_id": 0, "bos_id": self._tok.sot_token_id, "eos_id": self._tok.eot_token_id}

    def decode(self, ids: list[int]) -> str:
        if self.kind == "hf":
            text = self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
            return _SPLIT_DECIMAL.sub(".", _SPLIT_HYPHEN.sub("-", text)).strip()
        return self._tok.decode(ids).strip()

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
