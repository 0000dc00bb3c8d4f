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
