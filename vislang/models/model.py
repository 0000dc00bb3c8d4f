"""The dual encoder: image tower and text tower, each with a projection into one embedding space.

Towers return (tokens, pooled). The contrastive objective uses the projected, L2-normalised
pooled vectors; the matching head and caption decoder take the token sequences, which is why
the towers keep them, plus one summary token made from the image's embedding (`head_memory`).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from .color import ColorHistogram
from .decoder import CaptionDecoder
from .image_tower import create_image_tower
from .matching import MatchingHead
from .text_tower import create_text_tower, resolve_text_source
from .vocab import CaptionVocab


def projection(width: int, embed_dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(width, embed_dim, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, embed_dim))
    raise ValueError(f"unknown projection head {kind!r}; choose linear or mlp")


def decoder_source(cfg: dict[str, Any]) -> str:
    """The BERT-like model the caption decoder is built from: model.decoder.source, else the text
    tower's Hugging Face model, else (an open_clip text tower) the bundled MiniLM's architecture."""
    return cfg["decoder"]["source"] or (cfg["text"]["name"] if cfg["text"]["kind"] == "hf" else "minilm-l6")


class VisLangModel(nn.Module):
    def __init__(self, cfg: dict[str, Any], special_ids: dict[str, int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_tower = create_image_tower(cfg["image"])
        if cfg["image"]["lock"]:
            self.image_tower.lock(cfg["image"]["unlocked_groups"], cfg["image"]["freeze_bn_stats"])
        self.text_tower = create_text_tower(cfg["text"])
        bins = cfg["image"]["color_bins"]
        self.color = ColorHistogram(bins) if bins else None
        image_width = self.image_tower.width + (self.color.width if self.color else 0)
        self.image_proj = projection(image_width, cfg["embed_dim"], cfg["head"])
        self.text_proj = projection(self.text_tower.width, cfg["embed_dim"], cfg["head"])
        # Zero at the start: training begins from the text tower's own embedding.
        self.lexical = nn.Embedding(special_ids["vocab_size"], cfg["embed_dim"]) if cfg["lexical"] else None
        if self.lexical is not None:
            nn.init.zeros_(self.lexical.weight)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg["init_temperature"])))
        self.matching = self.decoder = self.caption_vocab = self.summary = None
        if cfg["matching"]["enabled"] or cfg["decoder"]["enabled"]:
            # A small convnet's last feature map has only a few coarse tokens; the embedding adds
            # what the contrastive objective learned (colour included) as one more token.
            self.summary = nn.Linear(cfg["embed_dim"], self.image_tower.token_width)
        if cfg["matching"]["enabled"]:
            m = cfg["matching"]
            self.matching = MatchingHead(self.text_tower.token_width, self.image_tower.token_width, m["width"], m["layers"],
                                         m["heads"])
        if cfg["decoder"]["enabled"]:
            d = cfg["decoder"]
            token_ids = d["token_ids"] or list(range(special_ids["vocab_size"]))
            self.caption_vocab = CaptionVocab(token_ids, special_ids["vocab_size"], special_ids["pad_id"])
            self.decoder = CaptionDecoder(resolve_text_source(decoder_source(cfg)), self.image_tower.token_width, token_ids,
                                          self.caption_vocab.special_ids(special_ids), d["layers"], d["max_length"],
                                          d["pretrained"], d["dropout"])
        if cfg["text"]["freeze"]:
            self.text_tower.requires_grad_(False)

    @property
    def text_frozen(self) -> bool:
        return bool(self.cfg["text"]["freeze"])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the towers' activations in the backward pass: less memory for more compute."""
        self.image_tower.set_grad_checkpointing(enable)
        if not self.text_frozen:
            self.text_tower.set_grad_checkpointing(enable)

    def image_features(self, pixels: torch.Tensor, locked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(image tokens [B, N, C] for the matching head and decoder, embedding [B, D] for contrast).

        `locked`: `pixels` are the output of the image tower's locked part (`locked_features`)."""
        if locked and self.color is not None:
            raise ConfigError("model.image.color_bins reads pixels, which train.locked_views does not keep: set one to 0")
        tokens, pooled = self.image_tower(locked=pixels) if locked else self.image_tower(pixels)
        if self.color is not None:
            pooled = torch.cat([pooled, self.color(pixels).to(pooled.dtype)], dim=-1)
        return tokens, F.normalize(self.image_proj(pooled), dim=-1)

    def head_memory(self, image_tokens: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
        """What the matching head and decoder attend to: the image tokens and the summary token, [B, N + 1, C]."""
        summary = self.summary(image_emb.to(self.summary.weight.dtype)).unsqueeze(1)
        return torch.cat([image_tokens, summary.to(image_tokens.dtype)], dim=1)

    def image_memory(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(head memory [B, N + 1, C], embedding [B, D]) of some pixels."""
        tokens, emb = self.image_features(pixels)
        return self.head_memory(tokens, emb), emb

    def parameter_parts(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by objective: each head's own, and the rest (towers, projections, temperature)."""
        heads = {"matching": self.matching, "decoder": self.decoder, "summary": self.summary}
        owned = {id(p) for m in heads.values() if m is not None for p in m.parameters()}
        parts = {name: [p for p in m.parameters() if p.requires_grad] for name, m in heads.items() if m is not None}
        parts["towers"] = [p for p in self.parameters() if p.requires_grad and id(p) not in owned]
        # (the towers' pretrained bodies, which train.body_lr_ratio slows, are `body_parameters`)
        return {name: params for name, params in parts.items() if params}

    def body_parameters(self) -> list[nn.Parameter]:
        """The towers' own trainable parameters (not their projections or the heads): what
        train.body_lr_ratio slows, as pretrained weights want a smaller step than new layers."""
        return [p for tower in (self.image_tower, self.text_tower) for p in tower.parameters() if p.requires_grad]

    def caption_loss(self, memory: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """The decoder's teacher-forced loss on tokenized captions [B, T] (tokenizer ids), given its memory."""
        ids = self.caption_vocab.to_decoder(caption_ids[:, : self.decoder.max_length])
        return self.decoder.loss(memory, ids)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_features(pixels)[1]

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text tower's pooled output, before projection (what a frozen tower's cache holds)."""
        _, pooled = self.text_tower(input_ids, attention_mask)
        return pooled

    def project_text(self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text embedding [B, D] from the tower's pooled features and the text's tokenizer ids."""
        projected = self.text_proj(features)
        if self.lexical is not None:
            weights = attention_mask.unsqueeze(-1).to(projected.dtype)
            bag = (self.lexical(input_ids) * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            projected = projected + bag.to(projected.dtype)
        return F.normalize(projected, dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.project_text(self.text_features(input_ids, attention_mask), input_ids, attention_mask)

    def train(self, mode: bool = True) -> "VisLangModel":
        super().train(mode)
        if self.text_frozen:
            self.text_tower.eval()  # a frozen tower keeps dropout off, so cached features stay exact
        return self
