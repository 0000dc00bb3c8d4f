"""The heads' own phase: the matching head and the caption decoder train after the towers.

With `train.heads_train_towers: false` the heads never move the towers, so they need not train
beside them: in the main loop the heads see image tokens of towers still far from their final
state. Here the finished towers embed every training image once per view (view 0 whole, as
inference sees it; the others random training crops; the main loop's locked-views cache, where
there is one, spares the locked part), and the heads then train on those cached features, with
no tower in the step. (On this project's CPU a heads step costs about what the heads add to a
joint step; the phase is not the CPU recipe's: docs/RESULTS.md.)
The main loop's end is checkpointed first: a stopped phase starts over from it on --resume.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from ..data.pairs import PairSampler
from ..data.pixels import view_batches
from ..models import VisLangModel
from .distributed import Ranks
from .schedule import lr_at
from .step import (Features, TextCache, encode_text_rows, head_losses, loss_weights, make_optimizer, optimizer_step,
                   set_lr)


@dataclass
class ImageViews:
    """The finished image tower's outputs for every training image, per view."""

    tokens: torch.Tensor  # [V, N, n, C]
    emb: torch.Tensor  # [V, N, D], L2-normalised


@torch.inference_mode()
def embed_views(model: VisLangModel, bank: torch.Tensor, image_size: int, views: int, augment_cfg: dict[str, Any],
                seed: int, device, memory_format: torch.memory_format, locked: torch.Tensor | None = None) -> ImageViews:
    """Every bank image through the image tower in eval mode: view 0 whole, the others random training crops.

    `locked` (the main loop's cache, `compute_locked_views`: the same views, drawn with the same
    seeds) spares the locked part: its views only go through the rest of the tower."""
    model.eval()
    tokens: list[list[torch.Tensor]] = [[] for _ in range(views)]
    emb: list[list[torch.Tensor]] = [[] for _ in range(views)]

    def keep(view: int, inputs: torch.Tensor, is_locked: bool) -> None:
        t, e = model.image_features(inputs.to(device, memory_format=memory_format), is_locked)
        tokens[view].append(t.float())
        emb[view].append(e.float())

    cached = 0 if locked is None else min(views, locked.shape[0])
    for view in range(cached):
        for start in range(0, len(bank), 256):
            keep(view, locked[view, start : start + 256].float(), True)
    for view, pixels in view_batches(bank, image_size, views, augment_cfg, seed, first=cached):
        keep(view, pixels, False)
    return ImageViews(torch.stack([torch.cat(t) for t in tokens]), torch.stack([torch.cat(e) for e in emb]))


def _freeze_towers(model: VisLangModel) -> list[torch.nn.Parameter]:
    """Stop gradients to everything but the heads; returns what was frozen, to thaw afterwards."""
    towers = model.parameter_parts().get("towers", [])
    for p in towers:
        p.requires_grad_(False)
    return towers


def train_heads(model: VisLangModel, tokenizer, views: ImageViews, sampler: PairSampler, text_cache: TextCache | None,
                captions: list[str], caption_weight: torch.Tensor, config: dict[str, Any], device,
                ranks: Ranks, logger, first_step: int,
                autocast: contextlib.AbstractContextManager | None = None) -> int:
    """Train the heads for `train.heads_phase` (steps, capped by minutes) on the finished towers'
    cached image features (`embed_views` with `heads_phase.views` views); returns the steps taken."""
    tcfg, phase = config["train"], config["train"]["heads_phase"]
    autocast = autocast or contextlib.nullcontext()
    budget_s = phase["minutes"] * 60 if phase["minutes"] else None
    total, step, start_time = phase["steps"], 0, time.time()
    frozen = _freeze_towers(model)
    optimizer = make_optimizer(model, tcfg)
    weights = loss_weights(tcfg)
    local_rows = ranks.rows(sampler.batch_size)

    def progress() -> float:
        by_time = ranks.from_main(time.time() - start_time) / budget_s if budget_s else 0.0
        return max(step / total, by_time)

    model.train()
    bar = tqdm(total=total, desc="heads phase", unit="step", mininterval=1.0, disable=not ranks.main)
    epoch = 0
    while progress() < 1.0:
        for batch in sampler.epoch(10_000 + epoch):  # other epochs' orders than the main loop's
            lr = lr_at(step, progress(), tcfg["lr"], phase["warmup_steps"], tcfg["min_lr_ratio"])
            set_lr(optimizer, lr)
            generator = torch.Generator().manual_seed(config["seed"] * 1_000_003 + first_step + step)
            items = torch.tensor(batch.items)
            view = torch.randint(phase["views"], (len(items),), generator=generator)
            image_tokens, image_emb = views.tokens[view, items].to(device), views.emb[view, items].to(device)
            texts = batch.texts[local_rows]
            with torch.no_grad(), autocast:
                text_tokens, text_mask, text_emb = encode_text_rows(model, tokenizer, texts, text_cache, device)
            text_emb = ranks.gather(text_emb)[0]
            with autocast:
                features = Features(image_tokens[local_rows], image_emb[local_rows], text_tokens, text_mask,
                                    text_emb[local_rows])
                losses = head_losses(model, tokenizer, features, image_emb, text_emb, batch, captions, caption_weight,
                                     tcfg, generator, ranks)
            sum(weights[name] * value for name, value in losses.items()).backward()
            optimizer_step(model, optimizer, tcfg["grad_clip"], ranks)
            step += 1
            bar.update(1)
            bar.set_postfix({name.removeprefix("loss_"): f"{value.item():.3f}" for name, value in losses.items()})
            if step % tcfg["log_every"] == 0 or step == 1:
                logged = ranks.mean({name: value.item() for name, value in losses.items()})
                logger.log(first_step + step, event="heads_phase", **logged, lr=lr, elapsed_s=time.time() - start_time)
            if progress() >= 1.0:
                break
        epoch += 1
    bar.close()
    for p in frozen:
        p.requires_grad_(True)
    return step
