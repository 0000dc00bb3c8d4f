"""The locked part of an EfficientNet-style tower (open_clip's lock switches) and its cached output."""
from __future__ import annotations

import pytest
import torch

from vislang.models.image_tower import TimmImageTower

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("unlocked_groups", [0, 1, 3])
@pytest.mark.parametrize("token_grid", [0, 2])
def test_tokens_from_the_locked_part_equal_the_whole_forward(unlocked_groups, token_grid):
    torch.manual_seed(0)
    tower = TimmImageTower("efficientnet-lite0", pretrained=False, image_size=64, token_grid=token_grid)
    tower.lock(unlocked_groups, freeze_bn_stats=True)
    tower.eval()
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        whole = tower(pixels)
        from_locked = tower(locked=tower.locked_features(pixels))
    for a, b in zip(whole, from_locked):
        torch.testing.assert_close(a, b)
    tokens, pooled = whole
    assert tokens.shape == (3, (token_grid or 2) ** 2, tower.token_width)  # 64 px: a 2x2 map
    locked, trained = tower._stages()
    if unlocked_groups == 0:  # all locked: the head too, so a step runs nothing of the tower
        assert trained == []
    else:
        assert trained and all(p.requires_grad for m in trained for p in m.parameters())
    assert all(not p.requires_grad for m in locked for p in m.parameters())


def test_token_grid_pools_the_heads_tokens_not_the_embedding():
    torch.manual_seed(0)
    full = TimmImageTower("efficientnet-lite0", pretrained=False, image_size=128).eval()
    pooled4 = TimmImageTower("efficientnet-lite0", pretrained=False, image_size=128, token_grid=2).eval()
    pooled4.load_state_dict(full.state_dict())
    pixels = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        (tokens, vector), (few, same) = full(pixels), pooled4(pixels)
    assert tokens.shape[1] == 16 and few.shape[1] == 4
    torch.testing.assert_close(vector, same)
    # each pooled token is the mean of its 2x2 block of the 4x4 map
    grid = tokens.transpose(1, 2).reshape(2, -1, 4, 4)
    torch.testing.assert_close(few[:, 0], grid[:, :, :2, :2].mean(dim=(2, 3)))


def test_the_heads_phase_reuses_the_locked_cache_for_the_same_views():
    from pathlib import Path

    from vislang.config import load_config
    from vislang.models import create_model
    from vislang.train.heads_phase import embed_views
    from vislang.train.locked_views import compute_locked_views

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
                         ["model.image.name=efficientnet-lite0", "model.image.pretrained=false", "model.image.lock=true",
                          "model.image.freeze_bn_stats=true", "model.image.token_grid=2"])
    torch.manual_seed(0)
    model, _ = create_model(config["model"], captions=["a"])
    bank = torch.randint(0, 255, (5, 3, 80, 72), dtype=torch.uint8)
    augment = {"scale": [0.6, 1.0], "flip": True}
    locked = compute_locked_views(model, bank, 64, 2, augment, seed=3, device="cpu")
    fresh = embed_views(model, bank, 64, 3, augment, 3, "cpu", torch.contiguous_format)
    reused = embed_views(model, bank, 64, 3, augment, 3, "cpu", torch.contiguous_format, locked)
    # the cache is kept in bfloat16: equal to its rounding, which shows that they came from it
    assert not torch.equal(reused.tokens[:2], fresh.tokens[:2])
    torch.testing.assert_close(reused.tokens, fresh.tokens, atol=0.05, rtol=0.02)
    torch.testing.assert_close(reused.emb, fresh.emb, atol=0.02, rtol=0.02)
    torch.testing.assert_close(reused.emb[2], fresh.emb[2])  # the view the cache lacks comes from the pixels
