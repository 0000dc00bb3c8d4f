"""Symmetric contrastive (InfoNCE) loss with an optional many-positives mask.

open_clip's ClipLoss assumes exactly one positive per row (labels = arange). Catalog batches
break that: several products share one caption ("RIBBA Frame, White") and a room photo is a
positive for the products it shows. With `positives=None` this is the same loss as ClipLoss;
with a mask, each row's target is spread evenly over its positives.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: temperature never below 0.01


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy over cosine logits.

    image_emb [N, D] and text_emb [M, D] are L2-normalised; positives [N, M] is a 0/1 mask
    whose every row and column has at least one 1 (None: the diagonal, N == M).
    """
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * image_emb @ text_emb.t()
    if positives is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    positives = positives.to(logits.dtype)
    to_text = positives / positives.sum(dim=1, keepdim=True)
    to_image = positives.t() / positives.t().sum(dim=1, keepdim=True)
    return (_soft_cross_entropy(logits, to_text) + _soft_cross_entropy(logits.t(), to_image)) / 2


def linked_image_loss(image_emb: torch.Tensor, logit_scale: torch.Tensor, links: torch.Tensor) -> torch.Tensor:
    """Image->image InfoNCE for rows with links: a room photo should find the photos of its products.

    links [N, N] is a 0/1 mask (no self-links); rows without any link are left out. Zero when the
    batch has no links.
    """
    rows = links.any(dim=1)
    if not rows.any():
        return image_emb.sum() * 0.0
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * image_emb[rows] @ image_emb.t()
    self_mask = torch.zeros_like(links[rows])
    self_mask[torch.arange(self_mask.shape[0]), rows.nonzero().squeeze(1)] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = links[rows].to(logits.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    log_probs = F.log_softmax(logits, dim=-1).masked_fill(self_mask, 0.0)
    return -(targets * log_probs).sum(dim=-1).mean()
