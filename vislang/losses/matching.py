"""Image-text matching loss with hard negatives mined from the contrastive similarities.

Following BLIP, each image gets one negative text and each text one negative image, drawn with
probability proportional to softmax(similarity) so that confusable pairs are picked most often.
The similarity must be the contrastive logits (cosine / temperature, as in BLIP): a softmax over
raw cosines, which lie in [-1, 1], is close to uniform and draws easy negatives.
Catalog batches have many positives per row (shared captions, room photos showing several
products), so the draw is restricted to pairs that the `positives` mask marks as non-matching:
a text that is also a correct description of the image must never be labelled "no match".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.matching import MatchingHead


def _check(similarity: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1] or similarity.shape != positives.shape:
        raise ValueError(
            f"similarity {tuple(similarity.shape)} and positives {tuple(positives.shape)} must both be [B, B]"
        )
    # The diagonal pairs are the ones matching_loss labels 1, so they can never be negatives.
    eye = torch.eye(positives.shape[0], dtype=torch.bool, device=positives.device)
    return positives.bool() | eye


def negative_probabilities(similarity: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distributions that `sample_hard_negatives` draws from.

    Returns (image_to_text [B, B], text_to_image [B, B]): row i of image_to_text is
    softmax(similarity[i]) over the texts that are not positives of image i; row j of
    text_to_image is softmax(similarity[:, j]) over the images that are not positives of text j.
    A row with no negative is all zeros. The diagonal counts as positive.
    """
    positives = _check(similarity, positives)
    sims = similarity.detach().float()

    def masked_softmax(logits: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
        probs = logits.masked_fill(excluded, float("-inf")).softmax(dim=-1)
        # All-excluded rows come out as NaN (softmax of only -inf).
        return probs.masked_fill(excluded.all(dim=-1, keepdim=True), 0.0)

    return masked_softmax(sims, positives), masked_softmax(sims.t(), positives.t())


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    empty = probs.sum(dim=-1) == 0
    device = probs.device
    if generator is not None:
        probs = probs.to(generator.device)
    # multinomial rejects all-zero rows: give them a placeholder, then overwrite the draw with -1.
    probs = probs.masked_fill(empty.to(probs.device).unsqueeze(-1), 1.0)
    drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(device)
    return drawn.masked_fill(empty, -1)


def sample_hard_negatives(
    similarity: torch.Tensor,
    positives: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One hard negative per image and per text, or -1 where a row or column has none.

    similarity [B, B] (image i, text j; treated as detached) and positives [B, B] bool
    (image i matches text j; not necessarily symmetric). Returns (negative_text [B], the text
    index drawn for each image; negative_image [B], the image index drawn for each text).
    """
    image_to_text, text_to_image = negative_probabilities(similarity, positives)
    return _draw(image_to_text, generator), _draw(text_to_image, generator)


def matching_loss(
    head: MatchingHead,
    image_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    similarity: torch.Tensor,
    positives: torch.Tensor,
    generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None,
    use_similarity: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Binary cross-entropy of `head` on the diagonal pairs (label 1) and the hard negatives (label 0).

    image_tokens [B, N, Ci], text_tokens [B, L, Ct], text_mask [B, L]; similarity and positives as in
    `sample_hard_negatives`. `rows` (default: all) picks the images and texts whose positive pair
    and negatives are scored; negatives are still drawn from the whole batch. Rows without a
    negative are skipped. `use_similarity` hands the head each pair's similarity to correct rather
    than replace. All pairs go through the head in one call; the loss is the mean over
    pairs. The dict holds float statistics for logging.
    """
    if text_tokens.shape[0] != image_tokens.shape[0] or similarity.shape[0] != image_tokens.shape[0]:
        raise ValueError("image_tokens, text_tokens and similarity must share the batch size")
    negative_text, negative_image = sample_hard_negatives(similarity, positives, generator)
    device = image_tokens.device
    index = torch.arange(image_tokens.shape[0], device=device) if rows is None else rows.to(device)
    negative_text, negative_image = negative_text.to(device)[index], negative_image.to(device)[index]
    batch = index.shape[0]
    has_text, has_image = negative_text >= 0, negative_image >= 0

    image_index = torch.cat([index, index[has_text], negative_image[has_image]])
    text_index = torch.cat([index, negative_text[has_text], index[has_image]])
    labels = torch.zeros(image_index.shape[0], device=device)
    labels[:batch] = 1.0

    length = int(text_mask[text_index].sum(dim=1).max())  # the batch is padded for its longest text
    # each image is projected once, though it sits in up to three pairs
    distinct, position = torch.unique(image_index, return_inverse=True)
    memory = head.image_memory(image_tokens[distinct])[position]
    logits = head.score(text_tokens[text_index, :length], text_mask[text_index, :length], memory,
                        similarity.to(device)[image_index, text_index] if use_similarity else None)
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels)

    with torch.no_grad():
        correct = ((logits > 0).float() == labels).float()
        negatives = correct.shape[0] - batch
        stats = {
            "itm_loss": loss.item(),
            "itm_accuracy": correct.mean().item(),
            "itm_positive_accuracy": correct[:batch].mean().item(),
            "itm_negatives": float(negatives),
        }
        if negatives:  # left out rather than NaN when every row was skipped
            stats["itm_negative_accuracy"] = correct[batch:].mean().item()
    return loss, stats
