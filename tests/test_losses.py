import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from vislang.losses import contrastive_loss


def naive_loss(img, txt, scale, positives):
    """Loop-by-loop InfoNCE with targets spread evenly over each row's positives."""
    n, m = positives.shape
    total_i = 0.0
    for i in range(n):
        logits = [scale * float(img[i] @ txt[j]) for j in range(m)]
        log_z = math.log(sum(math.exp(l) for l in logits))
        pos = [j for j in range(m) if positives[i, j]]
        total_i += -sum(logits[j] - log_z for j in pos) / len(pos)
    total_t = 0.0
    for j in range(m):
        logits = [scale * float(img[i] @ txt[j]) for i in range(n)]
        log_z = math.log(sum(math.exp(l) for l in logits))
        pos = [i for i in range(n) if positives[i, j]]
        total_t += -sum(logits[i] - log_z for i in pos) / len(pos)
    return (total_i / n + total_t / m) / 2


def _embeddings(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_diagonal_matches_open_clip_and_naive():
    img, txt = _embeddings(6)
    logit_scale = torch.tensor(math.log(10.0))
    ours = contrastive_loss(img, txt, logit_scale)
    theirs = ClipLoss()(img, txt, logit_scale.exp())
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    assert ours.item() == pytest.approx(naive_loss(img, txt, 10.0, torch.eye(6, dtype=torch.bool)), rel=1e-5)


def test_positive_mask_matches_naive():
    img, txt = _embeddings(5, seed=1)
    positives = torch.eye(5, dtype=torch.bool)
    positives[0, 3] = positives[3, 0] = True  # a shared caption
    positives[1, 4] = True  # a room and a product it shows, one way only
    ours = contrastive_loss(img, txt, torch.tensor(math.log(7.0)), positives)
    assert ours.item() == pytest.approx(naive_loss(img, txt, 7.0, positives), rel=1e-5)


def test_identity_mask_equals_no_mask():
    img, txt = _embeddings(4, seed=2)
    scale = torch.tensor(2.0)
    assert contrastive_loss(img, txt, scale, torch.eye(4, dtype=torch.bool)).item() == pytest.approx(
        contrastive_loss(img, txt, scale).item(), rel=1e-6
    )


def test_temperature_is_clamped_at_100():
    img, txt = _embeddings(4, seed=3)
    high = contrastive_loss(img, txt, torch.tensor(math.log(1e4)))
    assert high.item() == pytest.approx(naive_loss(img, txt, 100.0, torch.eye(4, dtype=torch.bool)), rel=1e-5)


def test_gradient_pulls_positive_pairs_together():
    img, txt = _embeddings(4, seed=4)
    img = img.clone().requires_grad_(True)
    loss = contrastive_loss(img, txt, torch.tensor(math.log(10.0)))
    loss.backward()
    stepped = F.normalize(img - 0.5 * img.grad, dim=-1)
    assert (stepped * txt).sum(-1).mean() > (img * txt).sum(-1).mean()
