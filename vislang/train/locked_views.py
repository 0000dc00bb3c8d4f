"""The image tower's locked part, computed once per view instead of once per step.

With `model.image.lock` and `freeze_bn_stats`, the locked groups of a pretrained tower are a fixed
function of the pixels: running them every step would spend most of a CPU budget recomputing
the same features. Instead every training image goes through them `train.locked_views` times
before the first step (view 0 whole, the others random training crops, as `embed_views` draws
them), the outputs are kept in bfloat16, and each step draws one of an image's views at random.
The unlocked groups, the projections and everything after train as usual on those features.
"""
from __future__ import annotations

import torch

from ..config import ConfigError
from ..data.pixels import view_batches
from ..models import VisLangModel


def check_locked_views(model: VisLangModel, views: int) -> None:
    """Refuse `train.locked_views` where the locked part is not fixed (so a cache would be stale)."""
    image = model.cfg["image"]
    if views and not (image["lock"] and image["freeze_bn_stats"]):
        raise ConfigError("train.locked_views caches a frozen part of the image tower: set model.image.lock=true "
                          "and model.image.freeze_bn_stats=true (or train.locked_views=0)")


@torch.inference_mode()
def compute_locked_views(model: VisLangModel, bank: torch.Tensor, image_size: int, views: int, augment_cfg: dict,
                         seed: int, device, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """[V, N, C, H, W] bfloat16: the locked part's output for every view of every bank image."""
    out = None
    filled = [0] * views
    for view, pixels in view_batches(bank, image_size, views, augment_cfg, seed, desc="locked image features"):
        pixels = pixels.to(device, memory_format=memory_format)  # the tower's format (train.channels_last: 2x on a CPU)
        features = model.image_tower.locked_features(pixels).to("cpu", torch.bfloat16)
        if out is None:
            out = torch.empty((views, len(bank), *features.shape[1:]), dtype=torch.bfloat16)
        out[view, filled[view] : filled[view] + len(features)] = features
        filled[view] += len(features)
    return out


def draw_views(cache: torch.Tensor, items: list[int], generator: torch.Generator) -> torch.Tensor:
    """One cached view per item, chosen at random: float [B, C, H, W]."""
    view = torch.randint(cache.shape[0], (len(items),), generator=generator)
    return cache[view, torch.tensor(items)].float()
