"""Image towers built from timm or open_clip. Each returns patch tokens and a pooled vector.

The tokens [B, N, C] are what later heads (matching, captioning) attend to; the pooled vector
[B, C] is what the contrastive projection sees.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from .registry import build_tower, unavailable, unknown_name

OFFLINE_HINT = "set model.image.pretrained=false (in the config or on the command line) to start from random weights"


class TimmImageTower(nn.Module):
    """Any timm model, headless; CNN feature maps are flattened into tokens. `image_size` is taken
    for the towers' common signature only: pixels are resized to it and a CNN takes any size (a timm
    ViT needs the same size in model.image.kwargs.img_size)."""

    def __init__(self, name: str, pretrained: bool = False, image_size: int = 224, **kwargs: Any) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name) and not name.startswith(("hf-hub:", "hf_hub:")):
            raise unknown_name("model.image.name", name, "timm", timm.list_models())
        try:
            self.body = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="", **kwargs)
        except RuntimeError as err:
            if "pretrained" in str(err).lower() or pretrained:
                raise unavailable(f"timm model {name!r}", err, OFFLINE_HINT) from err
            raise
        except OSError as err:  # hub download failures surface as OSError subclasses
            raise unavailable(f"timm model {name!r}", err, OFFLINE_HINT) from err
        except TypeError as err:  # a keyword the model class does not take
            raise ConfigError(f"model.image.kwargs {sorted(kwargs)}: {err}") from err
        self.width = self.token_width = self.body.num_features
        self.prefix_tokens = getattr(self.body, "num_prefix_tokens", 0)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body.forward_features(pixels)
        if features.ndim == 4:  # CNN: [B, C, H, W] -> tokens [B, H*W, C]
            tokens = features.flatten(2).transpose(1, 2)
            return tokens, tokens.mean(dim=1)
        pooled = features[:, 0] if self.prefix_tokens else features.mean(dim=1)
        return features, pooled


class OpenClipImageTower(nn.Module):
    """The vision transformer of an open_clip model config (e.g. "ViT-B-16")."""

    def __init__(self, name: str, pretrained: bool | str = False, image_size: int = 224, **kwargs: Any) -> None:
        super().__init__()
        import open_clip

        tag = pretrained if isinstance(pretrained, str) else None
        if pretrained is True:
            raise ConfigError("for open_clip towers, set model.image.pretrained to a tag such as 'laion2b_s34b_b88k'")
        if open_clip.get_model_config(name) is None and not name.startswith("hf-hub:"):
            raise unknown_name("model.image.name", name, "open_clip", open_clip.list_models())
        try:
            model = open_clip.create_model(name, pretrained=tag, force_image_size=image_size, **kwargs)
        except (RuntimeError, OSError) as err:
            raise unavailable(f"open_clip model {name!r} ({tag})", err, OFFLINE_HINT) from err
        self.body = model.visual
        self.body.output_tokens = True
        self.width = self.body.output_dim
        self.token_width = self.body.transformer.width

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.body(pixels)
        return tokens, pooled


IMAGE_TOWERS = {"timm": TimmImageTower, "open_clip": OpenClipImageTower}


def create_image_tower(cfg: dict[str, Any]) -> nn.Module:
    return build_tower(IMAGE_TOWERS, cfg, "image tower", image_size=cfg["image_size"])
