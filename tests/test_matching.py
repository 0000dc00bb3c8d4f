"""Image-text matching: the hard-negative sampler, the fusion head and the ITM loss."""
from __future__ import annotations

import math

import pytest
import torch

from vislang.losses.matching import matching_loss, negative_probabilities, sample_hard_negatives
from vislang.models.matching import MatchingHead


pytestmark = pytest.mark.usefixtures("one_thread")


def _head(text_width: int = 12, image_width: int = 10, **kwargs) -> MatchingHead:
    torch.manual_seed(0)
    return MatchingHead(text_width, image_width, width=16, layers=2, heads=2, **kwargs)


def _draw_many(similarity, positives, times, seed=0, copies=100):
    """`times` draws per row: `copies` independent copies of the batch are sampled at once.

    The copies sit on the diagonal of one big batch whose off-block pairs are all marked
    positive, so each copy only ever draws from itself. Returns two [times, B] tensors.
    """
    size = similarity.shape[0]
    big_similarity = torch.block_diag(*[similarity] * copies)
    big_positives = ~torch.block_diag(*[~positives.bool()] * copies)
    generator = torch.Generator().manual_seed(seed)
    offset = torch.arange(copies).repeat_interleave(size)

    def local(drawn):
        drawn = (drawn - offset * size).view(copies, size)
        assert ((drawn >= 0) & (drawn < size)).all(), "a draw left its copy"
        return drawn

    texts, images = [], []
    for _ in range(-(-times // copies)):
        negative_text, negative_image = sample_hard_negatives(big_similarity, big_positives, generator)
        texts.append(local(negative_text))
        images.append(local(negative_image))
    return torch.cat(texts)[:times], torch.cat(images)[:times]


# ---------------------------------------------------------------- sampler


def test_probabilities_are_softmax_over_non_positives():
    similarity = torch.tensor([[1.0, 2.0, 0.5], [0.0, 3.0, -1.0], [4.0, 1.0, 2.0]])
    positives = torch.eye(3, dtype=torch.bool)
    positives[0, 2] = True  # text 2 also describes image 0

    to_text, to_image = negative_probabilities(similarity, positives)

    e = math.exp
    expected_to_text = torch.tensor(
        [
            [0.0, 1.0, 0.0],  # image 0: only text 1 is a negative
            [e(0) / (e(0) + e(-1)), 0.0, e(-1) / (e(0) + e(-1))],
            [e(4) / (e(4) + e(1)), e(1) / (e(4) + e(1)), 0.0],
        ]
    )
    # text j's row runs over column j of similarity; text 2 has images 0 and 2 as positives.
    expected_to_image = torch.tensor(
        [
            [0.0, e(0) / (e(0) + e(4)), e(4) / (e(0) + e(4))],
            [e(2) / (e(2) + e(1)), 0.0, e(1) / (e(2) + e(1))],
            [0.0, 1.0, 0.0],
        ]
    )
    torch.testing.assert_close(to_text, expected_to_text)
    torch.testing.assert_close(to_image, expected_to_image)


def test_sample_frequencies_match_probabilities():
    similarity = torch.tensor([[0.0, 1.0, 0.0, -1.0], [0.5, 0.0, 0.0, 0.0], [1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    positives = torch.eye(4, dtype=torch.bool)
    to_text, to_image = negative_probabilities(similarity, positives)
    negative_text, negative_image = _draw_many(similarity, positives, times=4000)

    for draws, probs in ((negative_text, to_text), (negative_image, to_image)):
        frequencies = torch.stack([torch.bincount(draws[:, row], minlength=4) for row in range(4)]).float() / 4000
        torch.testing.assert_close(frequencies, probs, atol=0.03, rtol=0)


def test_overwhelming_negative_is_always_drawn():
    similarity = torch.zeros(4, 4)
    similarity[1, 3] = 50.0  # image 1 / text 3: a negative, and by far the most similar
    similarity[1, 1] = 100.0  # the positive is even more similar, but must never be drawn
    negative_text, negative_image = _draw_many(similarity, torch.eye(4, dtype=torch.bool), times=200)
    assert (negative_text[:, 1] == 3).all()
    assert (negative_image[:, 3] == 1).all()
    assert not (negative_text == torch.arange(4)).any() and not (negative_image == torch.arange(4)).any()


def test_duplicate_caption_is_never_a_negative():
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 2] = True  # image 0 matches text 2 too (a shared caption); NOT the other way round
    similarity = torch.zeros(4, 4)
    similarity[0, 2] = 30.0  # if the mask were ignored, text 2 would be image 0's negative every time
    similarity[2, 0] = 30.0  # image 2 / text 0 is not a positive, so it should be drawn

    negative_text, negative_image = _draw_many(similarity, positives, times=500)

    assert not (negative_text[:, 0] == 2).any()  # text 2 never a negative for image 0
    assert not (negative_image[:, 2] == 0).any()  # image 0 never a negative for text 2
    assert (negative_text[:, 2] == 0).all()  # asymmetric: text 0 is a fine negative for image 2
    assert (negative_image[:, 0] == 2).all()


def test_row_with_only_positives_gets_minus_one():
    positives = torch.eye(3, dtype=torch.bool)
    positives[1] = True  # image 1 matches every text
    negative_text, negative_image = sample_hard_negatives(torch.randn(3, 3), positives, torch.Generator().manual_seed(0))
    assert negative_text[1] == -1
    assert (negative_text[[0, 2]] >= 0).all()
    assert (negative_image >= 0).all() and not (negative_image == 1).any()

    negative_text, negative_image = sample_hard_negatives(torch.randn(3, 3), torch.ones(3, 3, dtype=torch.bool))
    assert (negative_text == -1).all() and (negative_image == -1).all()


def test_sampler_ignores_gradients_and_checks_shapes():
    similarity = torch.randn(3, 3, requires_grad=True)
    negative_text, _ = sample_hard_negatives(similarity, torch.eye(3, dtype=torch.bool))
    assert negative_text.dtype == torch.long and not negative_text.requires_grad
    with pytest.raises(ValueError):
        sample_hard_negatives(torch.randn(3, 4), torch.ones(3, 4, dtype=torch.bool))


# ---------------------------------------------------------------- head


def test_head_output_shape_and_gradients():
    head = _head()
    text, image = torch.randn(3, 5, 12), torch.randn(3, 4, 10)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    logits = head(text, mask, image)
    assert logits.shape == (3,)
    logits.sum().backward()
    for projection in (head.text_proj, head.image_proj):
        assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


def test_head_ignores_padded_positions():
    head = _head().eval()
    text, image = torch.randn(3, 6, 12), torch.randn(3, 4, 10)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # right- and left-padded
    changed = text.clone()
    padded = mask == 0
    changed[padded] = 100 * torch.randn(int(padded.sum()), 12)
    changed[0, 5] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(head(changed, mask, image), head(text, mask, image))
        # nor does how much padding there is (checks the attention key mask and the pooling)
        longer = torch.cat([text, torch.randn(3, 3, 12)], dim=1)
        longer_mask = torch.cat([mask, torch.zeros(3, 3, dtype=mask.dtype)], dim=1)
        torch.testing.assert_close(head(longer, longer_mask, image), head(text, mask, image))
        # and real tokens do matter
        changed[1, 2] += 1.0
        assert not torch.allclose(head(changed, mask, image)[1], head(text, mask, image)[1])


def test_head_all_padding_row_is_finite():
    head = _head().eval()
    with torch.no_grad():
        logits = head(torch.randn(2, 3, 12), torch.tensor([[0, 0, 0], [1, 1, 0]]), torch.randn(2, 4, 10))
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------- loss


def test_matching_loss_pairs_gradients_and_skips():
    head = _head()
    batch = 4
    text = torch.randn(batch, 5, 12, requires_grad=True)
    image = torch.randn(batch, 4, 10, requires_grad=True)
    mask = torch.ones(batch, 5, dtype=torch.long)
    positives = torch.eye(batch, dtype=torch.bool)
    positives[2] = True  # image 2 has no negative text: skipped on the image side only

    loss, stats = matching_loss(head, image, text, mask, torch.randn(batch, batch), positives)
    assert torch.isfinite(loss)
    assert stats["itm_negatives"] == (batch - 1) + batch
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    loss.backward()
    assert text.grad.abs().sum() > 0 and image.grad.abs().sum() > 0

    loss, stats = matching_loss(head, image, text, mask, torch.randn(batch, batch), torch.ones(batch, batch))
    assert torch.isfinite(loss) and stats["itm_negatives"] == 0.0
    assert all(math.isfinite(v) for v in stats.values())


def test_matching_loss_on_chosen_rows_equals_the_loss_on_those_pairs():
    head = _head()
    batch = 6
    generator = torch.Generator().manual_seed(3)
    text, image = torch.randn(batch, 5, 12, generator=generator), torch.randn(batch, 4, 10, generator=generator)
    mask = (torch.arange(5) < torch.tensor([2, 5, 3, 4, 1, 2])[:, None]).long()
    similarity, positives = torch.randn(batch, batch, generator=generator), torch.eye(batch, dtype=torch.bool)
    rows = torch.tensor([4, 1])
    negative_text, negative_image = sample_hard_negatives(similarity, positives, torch.Generator().manual_seed(7))
    loss, stats = matching_loss(head, image, text, mask, similarity, positives, torch.Generator().manual_seed(7), rows)
    assert stats["itm_negatives"] == 4.0
    pairs_image = torch.cat([rows, rows, negative_image[rows]])
    pairs_text = torch.cat([rows, negative_text[rows], rows])
    logits = head(text[pairs_text], mask[pairs_text], image[pairs_image])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 1, 0, 0, 0, 0]))
    assert torch.allclose(loss, expected, atol=1e-6)


def _toy_batch(text_codes, image_codes, batch, generator):
    """Each sample is a class; its text and image tokens are that class's random code plus noise."""
    classes = torch.randint(len(text_codes), (batch,), generator=generator)
    text = text_codes[classes].unsqueeze(1) + 0.3 * torch.randn(batch, 6, text_codes.shape[1], generator=generator)
    image = image_codes[classes].unsqueeze(1) + 0.3 * torch.randn(batch, 4, image_codes.shape[1], generator=generator)
    lengths = torch.randint(2, 7, (batch,), generator=generator)
    mask = (torch.arange(6) < lengths.unsqueeze(1)).long()
    positives = classes.unsqueeze(1) == classes.unsqueeze(0)  # same class: a "shared caption"
    return image, text, mask, torch.randn(batch, batch, generator=generator), positives


def test_matching_loss_learns_toy_task():
    generator = torch.Generator().manual_seed(0)
    text_codes, image_codes = torch.randn(5, 12, generator=generator), torch.randn(5, 10, generator=generator)
    head = _head()
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)

    losses = []
    for _ in range(100):
        loss, _ = matching_loss(head, *_toy_batch(text_codes, image_codes, 16, generator), generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    head.eval()
    with torch.no_grad():
        stats = [matching_loss(head, *_toy_batch(text_codes, image_codes, 32, generator), generator=generator)[1]
                 for _ in range(5)]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert sum(s["itm_accuracy"] for s in stats) / len(stats) > 0.9
    assert min(s["itm_positive_accuracy"] for s in stats) > 0.8
    assert min(s["itm_negative_accuracy"] for s in stats) > 0.8
