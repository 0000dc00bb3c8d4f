import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from vislang.losses import contrastive_loss


def naive_one_way(sims, positives):
    """Mean over rows of -(mean log-softmax over the row's positives), computed loop by loop."""
    total = 0.0
    for row, mask in zip(sims, positives):
        log_z = math.log(sum(math.exp(s) for s in row))
        pos = [j for j in range(len(row)) if mask[j]]
        total += -sum(row[j] - log_z for j in pos) / len(pos)
    return total / len(sims)


def naive_loss(img, txt, scale, positives):
    sims = [[scale * float(i @ t) for t in txt] for i in img]
    columns = [list(c) for c in zip(*sims)]
    return (naive_one_way(sims, positives.tolist()) + naive_one_way(columns, positives.t().tolist())) / 2


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


def test_linked_image_loss_matches_naive_and_skips_unlinked_rows():
    from vislang.losses import linked_image_loss

    img, _ = _embeddings(4, seed=5)
    links = torch.zeros(4, 4, dtype=torch.bool)
    links[0, 2] = links[0, 3] = links[2, 0] = True  # room 0 shows products 2 and 3; row 1 has no link
    ours = linked_image_loss(img, torch.tensor(math.log(5.0)), links).item()
    expected = []
    for row in (0, 2):
        others = [j for j in range(4) if j != row]
        sims = [5.0 * float(img[row] @ img[j]) for j in others]
        log_z = math.log(sum(math.exp(s) for s in sims))
        pos = [k for k, j in enumerate(others) if links[row, j]]
        expected.append(-sum(sims[k] - log_z for k in pos) / len(pos))
    assert ours == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert linked_image_loss(img, torch.tensor(1.0), torch.zeros(4, 4, dtype=torch.bool)).item() == 0.0
