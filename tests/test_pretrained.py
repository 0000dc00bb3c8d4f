"""The bundled pretrained image towers: weights converted strictly, read without unpickling, and
features that know what things look like (far better than a random-init tower's)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from vislang.models.image_tower import TimmImageTower
from vislang.models.pretrained import BUNDLED_IMAGE_MODELS, bundled_weights_file, convert_by_position, package_weights


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISLANG_CACHE", str(tmp_path / "cache"))


def test_converted_weights_load_strictly_into_timm():
    import timm
    from safetensors.torch import load_file

    name = "efficientnet-lite0"
    source = torch.load(package_weights(name), map_location="cpu", weights_only=True)
    reference = timm.create_model(BUNDLED_IMAGE_MODELS[name].architecture, pretrained=False)
    converted = load_file(bundled_weights_file(name))
    # every key and shape: load_state_dict(strict=True) raises on any missing, extra or mis-shaped tensor
    reference.load_state_dict(converted, strict=True)
    assert len(converted) == len(source) == len(reference.state_dict())
    # the pretrained tower holds the package's tensors (the first conv, the last block), headless
    tower = TimmImageTower(name, pretrained=True)
    assert torch.equal(tower.body.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(tower.body.conv_head.weight, source["_conv_head.weight"])
    assert torch.equal(tower.body.bn2.running_var, source["_bn1.running_var"])


def test_conversion_refuses_a_shape_mismatch():
    source = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    with pytest.raises(ValueError, match="does not fit"):
        convert_by_position(source, {"x": torch.zeros(2, 3), "y": torch.zeros(5)})
    with pytest.raises(ValueError, match="tensors for a model with"):
        convert_by_position(source, {"x": torch.zeros(2, 3)})


def test_weights_are_read_without_unpickling(monkeypatch):
    """Every torch.load of the conversion is a weights_only one (tensors and plain containers only)."""
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    bundled_weights_file("efficientnet-lite0")  # converts from the package's .pth
    assert calls == [True]


def test_a_pickled_object_in_the_weights_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def _pattern(kind: str, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A patterned image of one of four kinds, in random colours, scale and phase."""
    fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(fg - bg).sum() < 150:
        fg = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[:size, :size].astype(float)
    period = rng.uniform(8, 20)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    mask = {
        "stripes": np.sin(2 * np.pi * u / period) > 0,
        "checks": (np.sin(2 * np.pi * u / period) > 0) ^ (np.sin(2 * np.pi * v / period) > 0),
        "rings": np.sin(2 * np.pi * np.hypot(yy - cy, xx - cx) / period) > 0,
        "dots": (np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)) > 0.6,
    }[kind]
    return np.where(mask[..., None], fg, bg).astype(np.uint8)


def _knn_accuracy(tower: TimmImageTower, images: torch.Tensor, labels: np.ndarray) -> float:
    with torch.no_grad():
        features = torch.nn.functional.normalize(tower.eval()(images)[1], dim=-1).numpy()
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)  # leave-one-out 1-NN
    return float(np.mean(labels[similarity.argmax(1)] == labels))


def test_pretrained_features_separate_kinds_far_better_than_random_init():
    from vislang.data.pixels import normalize

    rng = np.random.default_rng(0)
    kinds = ["stripes", "checks", "rings", "dots"]
    arrays = [_pattern(kind, rng) for kind in kinds for _ in range(12)]
    labels = np.repeat(np.arange(len(kinds)), 12)
    images = normalize(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
    torch.manual_seed(0)
    pretrained = _knn_accuracy(TimmImageTower("efficientnet-lite0", pretrained=True), images, labels)
    random_init = _knn_accuracy(TimmImageTower("efficientnet-lite0", pretrained=False), images, labels)
    print(f"1-NN accuracy: pretrained {pretrained:.3f}, random init {random_init:.3f}")
    assert pretrained >= 0.85, pretrained
    assert pretrained >= random_init + 0.3, (pretrained, random_init)
