"""One optimiser step: every objective's loss on a global batch, backward, gradient update.

With `train.accum_steps` = k > 1 the batch goes through the towers in k micro-batches, in the
manner of open_clip's `accum_freq`: a first pass without gradients computes every row's
embeddings, then each micro-batch is run again with gradients and its fresh embeddings replace
its cached ones in the full set, so the contrastive and link losses still see the whole batch
as negatives; summing the k backward passes gives the same gradient as one pass over the batch
(the temperature's share is taken once, in the first micro-batch). Peak activation memory is
that of one micro-batch. The matching and caption heads then train on the cached, detached
image and text tokens of the whole batch, once per step, which is exactly what they see without
accumulation when `train.heads_train_towers` is false; accumulating with heads that train the
towers is refused.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import ConfigError
from ..losses import contrastive_loss, linked_image_loss, matching_loss
from ..models import VisLangModel
from .distributed import Ranks

TextCache = dict[str, tuple[torch.Tensor, torch.Tensor]]  # text -> (pooled [C], tokens [L, C])


@torch.inference_mode()
def text_feature_cache(model: VisLangModel, tokenizer, texts: list[str], device, keep_tokens: bool) -> TextCache:
    """A frozen text tower gives the same features every step: compute each text once."""
    unique = sorted(set(texts), key=len)  # similar lengths per batch: little padding
    cache: TextCache = {}
    empty = torch.zeros(0)
    for start in tqdm(range(0, len(unique), 128), desc="encoding texts", unit="batch", mininterval=1.0):
        chunk = unique[start : start + 128]
        ids, mask = tokenizer(chunk)
        tokens, pooled = model.text_tower(ids.to(device), mask.to(device))
        for row, text in enumerate(chunk):
            kept = tokens[row, : int(mask[row].sum())].float().clone() if keep_tokens else empty
            cache[text] = (pooled[row].float().clone(), kept)
    return cache


def _cached_text_batch(cache: TextCache, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens [B, L, C] padded, mask [B, L], pooled [B, C]) from the cache."""
    pooled = torch.stack([cache[t][0] for t in texts]).to(device)
    rows = [cache[t][1] for t in texts]
    if not rows[0].numel():
        return pooled.new_zeros(len(texts), 0, 0), pooled.new_zeros(len(texts), 0), pooled
    tokens = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(device)
    lengths = torch.tensor([len(r) for r in rows], device=device)
    mask = (torch.arange(tokens.shape[1], device=device) < lengths[:, None]).long()
    return tokens, mask, pooled


def inverse_caption_frequency(items: list) -> torch.Tensor:
    """1 / (how many training items share the item's caption), per item.

    A hundred products named "No name Wall clock" would otherwise teach the decoder that one
    caption fits any photo; weighting by inverse frequency gives every distinct caption one vote.
    """
    counts: dict[str, int] = {}
    for item in items:
        counts[item.caption] = counts.get(item.caption, 0) + 1
    return torch.tensor([1.0 / counts[item.caption] for item in items])


def caption_rows(batch_items: list[int], weight: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of the batch the decoder trains on this step: `count` (0: all), drawn by caption weight."""
    if not count or count >= len(batch_items):
        return torch.arange(len(batch_items))
    return torch.multinomial(weight[batch_items], count, replacement=False, generator=generator)


def loss_weights(tcfg: dict[str, Any]) -> dict[str, float]:
    """What each objective's loss is multiplied by in the sum that is minimised."""
    return {"loss_contrastive": 1.0, "loss_links": tcfg["link_weight"], "loss_matching": tcfg["matching_weight"],
            "loss_caption": tcfg["caption_weight"]}


def pad_text(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text tokens [B, L, C] and mask [B, L] padded to `length` positions: rows from different
    micro-batches or processes pad to different lengths, and joining them needs one."""
    if not tokens.numel():
        return tokens, mask
    pad = length - tokens.shape[1]
    return F.pad(tokens, (0, 0, 0, pad)), F.pad(mask, (0, pad))


@dataclass
class Features:
    """The towers' outputs for some rows of a batch."""

    image_tokens: torch.Tensor  # [B, N, C]
    image_emb: torch.Tensor  # [B, D], L2-normalised
    text_tokens: torch.Tensor  # [B, L, C]; [B, 0, 0] when a frozen tower's cache keeps no tokens
    text_mask: torch.Tensor  # [B, L]
    text_emb: torch.Tensor  # [B, D], L2-normalised

    @staticmethod
    def cat(parts: list["Features"], text_length: int) -> "Features":
        """Rows of several micro-batches as one; text tokens padded to `text_length` first."""
        texts = [pad_text(f.text_tokens, f.text_mask, text_length) for f in parts]
        return Features(torch.cat([f.image_tokens for f in parts]), torch.cat([f.image_emb for f in parts]),
                        torch.cat([t for t, _ in texts]), torch.cat([m for _, m in texts]),
                        torch.cat([f.text_emb for f in parts]))


def encode_text_rows(model: VisLangModel, tokenizer, texts: list[str], text_cache: TextCache | None,
                     device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The text tower on some texts (its features come from the cache when it is frozen):
    (tokens [B, L, C], mask [B, L], embeddings [B, D])."""
    ids, id_mask = (t.to(device) for t in tokenizer(texts))
    if text_cache is not None:
        text_tokens, text_mask, text_pooled = _cached_text_batch(text_cache, texts, device)
    else:
        text_mask = id_mask
        text_tokens, text_pooled = model.text_tower(ids, text_mask)
    return text_tokens, text_mask, model.project_text(text_pooled, ids, id_mask).float()


def encode_rows(model: VisLangModel, tokenizer, pixels: torch.Tensor, texts: list[str], text_cache: TextCache | None,
                locked: bool = False) -> Features:
    """Both towers on some rows (`locked`: `pixels` are the image tower's cached locked part)."""
    image_tokens, image_emb = model.image_features(pixels, locked)
    return Features(image_tokens, image_emb.float(), *encode_text_rows(model, tokenizer, texts, text_cache, pixels.device))


def contrastive_losses(image_emb: torch.Tensor, text_emb: torch.Tensor, batch, tcfg: dict[str, Any],
                       logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """The contrastive loss (and the room -> product photo loss) over the whole global batch."""
    positives = batch.positives.to(image_emb.device)
    losses = {"loss_contrastive": contrastive_loss(image_emb, text_emb, logit_scale, positives)}
    if tcfg["link_weight"]:
        losses["loss_links"] = linked_image_loss(image_emb, logit_scale, batch.links.to(image_emb.device))
    return losses


def head_losses(model: VisLangModel, tokenizer, features: Features, image_emb: torch.Tensor, text_emb: torch.Tensor, batch,
                captions: list[str], caption_weight: torch.Tensor, tcfg: dict[str, Any], generator: torch.Generator,
                ranks: Ranks) -> dict[str, torch.Tensor]:
    """The matching and caption losses; `features` are this rank's rows, the embeddings the gathered ones.

    The heads score this rank's share of the rows they pick (the same picks on every rank).
    """
    losses: dict[str, torch.Tensor] = {}
    if model.matching is None and model.decoder is None:
        return losses
    device = image_emb.device
    image_tokens, text_tokens, text_mask = features.image_tokens, features.text_tokens, features.text_mask
    summary_emb = image_emb
    if not tcfg["heads_train_towers"]:
        image_tokens, text_tokens, summary_emb = image_tokens.detach(), text_tokens.detach(), image_emb.detach()
    if ranks.world > 1:
        text_tokens, text_mask = pad_text(text_tokens, text_mask, model.cfg["text"]["max_length"])
        image_tokens, text_tokens, text_mask = ranks.gather(image_tokens, text_tokens, text_mask.float())
    text_mask = text_mask.long()
    share = slice(ranks.rank, None, ranks.world)
    memory = model.head_memory(image_tokens, summary_emb)
    if model.matching is not None:
        logits = (model.logit_scale.exp() * image_emb @ text_emb.t()).detach()
        rows = torch.randperm(len(batch.items), generator=generator)[: tcfg["matching_batch"] or None]
        losses["loss_matching"], _ = matching_loss(model.matching, memory, text_tokens, text_mask, logits,
                                                   batch.positives.to(device), generator, rows[share],
                                                   use_similarity=True)
    if model.decoder is not None:
        rows = caption_rows(batch.items, caption_weight, tcfg["caption_batch"], generator)[share].to(device)
        ids, _ = tokenizer([captions[batch.items[i]] for i in rows.tolist()])
        losses["loss_caption"] = model.caption_loss(memory[rows], ids.to(device))
    return losses


def check_accumulation(model: VisLangModel, tcfg: dict[str, Any], rows: int) -> None:
    """Refuse the `train.accum_steps` that cannot work, before a run spends anything on it.

    `rows` is how many rows of each batch this process runs.
    """
    micro = tcfg["accum_steps"]
    if not isinstance(micro, int) or micro < 1:
        raise ConfigError(f"train.accum_steps must be a whole number >= 1, got {micro!r}")
    if micro > 1 and tcfg["heads_train_towers"] and (model.matching is not None or model.decoder is not None):
        raise ConfigError("train.accum_steps > 1 trains the heads on detached tokens: set train.heads_train_towers=false")
    if rows % micro:
        raise ConfigError(f"train.accum_steps ({micro}) must divide each process's {rows} rows of the batch")


def forward_backward(
    model: VisLangModel, tokenizer, pixels: torch.Tensor, batch, text_cache: TextCache | None, captions: list[str],
    caption_weight: torch.Tensor, tcfg: dict[str, Any], generator: torch.Generator, ranks: Ranks,
    autocast: contextlib.AbstractContextManager | None = None, heads: bool = True, locked: bool = False,
) -> dict[str, torch.Tensor]:
    """Every objective's loss on one global batch, with their weighted sum's gradients accumulated.

    `heads=False` leaves the matching head and the decoder out (they train in a phase of their own).

    `pixels` are this rank's rows of the batch (with `locked`, the image tower's locked part's output). The towers see those rows; embeddings (and the
    heads' token sequences) are gathered so the contrastive loss and the hard negatives span the
    whole global batch. Returns the losses, detached.
    """
    autocast = autocast or contextlib.nullcontext()
    weights = loss_weights(tcfg)
    texts = batch.texts[ranks.rows(len(batch.texts))]
    micro = tcfg["accum_steps"]

    def backward(losses: dict[str, torch.Tensor]) -> None:
        sum(weights[name] * value for name, value in losses.items()).backward()

    if micro == 1:
        with autocast:
            features = encode_rows(model, tokenizer, pixels, texts, text_cache, locked)
            image_emb, text_emb = ranks.gather(features.image_emb, features.text_emb)
            losses = contrastive_losses(image_emb, text_emb, batch, tcfg, model.logit_scale)
            if heads:
                losses.update(head_losses(model, tokenizer, features, image_emb, text_emb, batch, captions,
                                          caption_weight, tcfg, generator, ranks))
        backward(losses)
        return {name: value.detach() for name, value in losses.items()}

    check_accumulation(model, tcfg, len(texts))
    size = len(texts) // micro
    chunks = [slice(j * size, (j + 1) * size) for j in range(micro)]
    text_length = model.cfg["text"]["max_length"]
    with torch.no_grad(), autocast:
        cached = [encode_rows(model, tokenizer, pixels[c], texts[c], text_cache, locked) for c in chunks]
    for j, chunk in enumerate(chunks):
        with autocast:
            fresh = encode_rows(model, tokenizer, pixels[chunk], texts[chunk], text_cache, locked)
            image_emb, text_emb = ranks.gather(torch.cat([fresh.image_emb if i == j else c.image_emb for i, c in enumerate(cached)]),
                                               torch.cat([fresh.text_emb if i == j else c.text_emb for i, c in enumerate(cached)]))
            # every micro-batch sees the full loss; its temperature gradient must count once
            scale = model.logit_scale if j == 0 else model.logit_scale.detach()
            losses = contrastive_losses(image_emb, text_emb, batch, tcfg, scale)
            if heads and j == micro - 1:
                losses.update(head_losses(model, tokenizer, Features.cat(cached, text_length), image_emb.detach(),
                                          text_emb.detach(), batch, captions, caption_weight, tcfg, generator, ranks))
        backward(losses)
    return {name: value.detach() for name, value in losses.items()}


def make_optimizer(model: VisLangModel, tcfg: dict[str, Any]) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and the temperature (as in CLIP), and the
    towers' bodies at `train.body_lr_ratio` of the learning rate (`set_lr` applies it).

    `train.fused_optimizer` updates every tensor in one kernel per step (CPU and CUDA).
    """
    body = {id(p) for p in model.body_parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decays = not (param.ndim < 2 or "logit_scale" in name)
            groups.setdefault((id(param) in body, decays), []).append(param)
    param_groups = [{"params": params, "weight_decay": tcfg["weight_decay"] if decays else 0.0,
                     "lr_ratio": tcfg["body_lr_ratio"] if in_body else 1.0}
                    for (in_body, decays), params in groups.items()]
    return torch.optim.AdamW(param_groups, lr=tcfg["lr"], betas=(0.9, 0.98), fused=bool(tcfg["fused_optimizer"]))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """This step's learning rate, times each group's ratio (the towers' bodies' `train.body_lr_ratio`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_ratio"]


def speed_up(model: VisLangModel, tcfg: dict[str, Any]) -> torch.memory_format:
    """Apply the memory and speed switches of `train`; returns the memory format pixels should take."""
    if tcfg["grad_checkpointing"]:
        model.set_grad_checkpointing()
    memory_format = torch.channels_last if tcfg["channels_last"] else torch.contiguous_format
    model.image_tower.to(memory_format=memory_format)
    if tcfg["compile"]:
        model.image_tower.compile()  # in place: parameter names (and checkpoints) stay unchanged
    return memory_format


class TrainingDiverged(RuntimeError):
    """The gradients stopped being finite: the weights are left as they were before the step."""


def optimizer_step(model: VisLangModel, optimizer: torch.optim.Optimizer, grad_clip: float, ranks: Ranks) -> torch.Tensor:
    """Average the accumulated gradients over ranks, clip, update, clear; returns the towers' norm before clipping.

    Non-finite gradients (a loss gone to NaN or inf) raise TrainingDiverged before the update:
    clipping would turn them into NaN weights and the run would go on to save them. Every rank
    averages the same gradients, so every rank raises together."""
    ranks.average_gradients(model)
    # Each head is clipped on its own: one norm over everything would let a head's large
    # gradient shrink the towers' step, so switching a head on would change the contrastive model.
    norms = {name: torch.nn.utils.clip_grad_norm_(params, grad_clip) for name, params in model.parameter_parts().items()}
    if not torch.isfinite(torch.stack(list(norms.values()))).all():  # one device sync a step, not one a part
        bad = [name for name, norm in norms.items() if not torch.isfinite(norm)]
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"training diverged: gradients not finite ({', '.join(bad)})")
    grad_norm = norms.get("towers", next(iter(norms.values())))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
