"""Image-text matching (ITM) head: text tokens attend to image tokens and one logit says "match".

BLIP-style fusion: both token sequences are projected to a shared width; each layer runs
pre-norm self-attention over the text (padding masked), pre-norm cross-attention from text to
image tokens, and an MLP. The pooled text state goes through Linear(width, 1). When the pair's
contrastive logit (temperature-scaled cosine similarity) is given, it is added with a learned
weight: the head then learns a correction to the contrastive score, which is what re-ranking
the contrastive top hits needs, instead of relearning the whole score from a few coarse image
tokens.

Pooling is the masked mean over real text tokens, not the first position. The text towers do
not agree on what sits at position 0: an HF encoder puts [CLS] there, but the open_clip text
transformer is causal, so its first token is a start-of-text token that has seen nothing. The
masked mean works for both and does not care which side the padding is on.
"""
from __future__ import annotations

import torch
from torch import nn


class _FusionLayer(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * width, width),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, text: torch.Tensor, padding: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = self.self_norm(text)
        text = text + self.drop(self.self_attn(h, h, h, key_padding_mask=padding, need_weights=False)[0])
        h = self.cross_norm(text)
        text = text + self.drop(self.cross_attn(h, image, image, need_weights=False)[0])
        return text + self.drop(self.mlp(self.mlp_norm(text)))


class MatchingHead(nn.Module):
    """Scores (text i, image i) pairs: one match/no-match logit per pair."""

    def __init__(
        self,
        text_width: int,
        image_width: int,
        width: int = 256,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.text_proj = nn.Linear(text_width, width)
        self.image_proj = nn.Linear(image_width, width)
        # Image tokens are keys/values only and never updated, so they are normalised once here
        # (tower token scales differ a lot, e.g. raw CNN feature maps vs ViT outputs).
        self.image_norm = nn.LayerNorm(width)
        self.layers = nn.ModuleList(_FusionLayer(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, 1)
        self.similarity_weight = nn.Parameter(torch.tensor(1.0))

    def image_memory(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens [B, N, Ci] projected and normalised once: the keys/values every text paired
        with that image attends to (training pairs an image with several texts)."""
        return self.image_norm(self.image_proj(image_tokens))

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor,
                similarity: torch.Tensor | None = None) -> torch.Tensor:
        """text_tokens [B, L, Ct], text_mask [B, L] (1 = real), image_tokens [B, N, Ci], optional
        contrastive logit of each pair [B] -> logits [B]."""
        return self.score(text_tokens, text_mask, self.image_memory(image_tokens), similarity)

    def score(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_memory: torch.Tensor,
              similarity: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` on image tokens already through `image_memory` ([B, N, width])."""
        if text_tokens.shape[:2] != text_mask.shape or text_tokens.shape[0] != image_memory.shape[0]:
            raise ValueError(
                f"shape mismatch: text_tokens {tuple(text_tokens.shape)}, text_mask {tuple(text_mask.shape)}, "
                f"image_tokens {tuple(image_memory.shape)}"
            )
        real = text_mask.bool()
        # An all-padding row would make every attention key masked (NaN); let it keep its first token.
        real = torch.cat([real[:, :1] | ~real.any(dim=1, keepdim=True), real[:, 1:]], dim=1)
        padding = ~real
        # masked_fill rather than multiplying by the mask: padded values may be anything, even inf.
        text = self.text_proj(text_tokens.masked_fill(padding.unsqueeze(-1), 0.0))
        for layer in self.layers:
            text = layer(text, padding, image_memory)
        text = self.norm(text).masked_fill(padding.unsqueeze(-1), 0.0)
        pooled = text.sum(dim=1) / real.sum(dim=1, keepdim=True).to(text.dtype)
        logits = self.classifier(pooled).squeeze(-1)
        if similarity is not None:
            logits = logits + self.similarity_weight * similarity.to(logits.dtype)
        return logits
