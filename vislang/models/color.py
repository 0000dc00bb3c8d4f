"""A colour histogram of the input photo, fed to the image projection beside the tower's features.

Catalog queries name colours ("Black-brown", "White, pine"). A convnet trained from scratch on a
few thousand photos learns shapes slowly and colours unreliably at low resolution; a fixed soft
RGB histogram gives the projection head colour for free. It has no weights.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.pixels import MEAN, STD


class ColorHistogram(nn.Module):
    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins
        self.width = bins**3
        self.register_buffer("centers", torch.linspace(0.0, 1.0, bins), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, 3, H, W] -> [B, bins**3], the square root of a soft histogram."""
        rgb = (pixels.float() * STD.to(pixels.device) + MEAN.to(pixels.device)).clamp(0, 1)
        rgb = nn.functional.avg_pool2d(rgb, 2) if min(rgb.shape[-2:]) > 32 else rgb
        flat = rgb.flatten(2)  # [B, 3, P]
        # Triangular weights: each value splits between its two nearest bin centres.
        weights = (1 - (flat.unsqueeze(-1) - self.centers).abs() * (self.bins - 1)).clamp_min(0)  # [B, 3, P, bins]
        r, g, b = weights.unbind(1)
        joint = torch.einsum("bpi,bpj,bpk->bijk", r, g, b).flatten(1) / flat.shape[-1]
        return joint.sqrt()
