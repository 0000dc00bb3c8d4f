"""The training loop, top to bottom: data, model, optimiser, steps, checkpoints, evaluation.

The run stops at `train.epochs` or at `train.max_minutes` of wall clock, whichever comes first;
the learning-rate schedule follows whichever is further along, so a time-capped run still
finishes its cosine decay.
"""
from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_model
from tqdm import tqdm

from ..api import VisLang
from ..data import find_data_dir, read_catalog
from ..data.pairs import PairSampler
from ..data.pixels import augment, build_image_bank
from ..eval import evaluate
from ..losses import contrastive_loss, linked_image_loss, matching_loss
from ..models import VisLangModel, create_model
from ..checkpoint import find_checkpoint, save_checkpoint
from . import distributed
from .distributed import Ranks
from .logger import NullLogger, RunLogger, plot_curves
from .schedule import lr_at

CACHE_MARGIN = 1.15  # the image bank is a bit larger than the crops, so crops can move


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, tcfg: dict[str, Any]) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and the temperature (as in CLIP)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": tcfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tcfg["lr"], betas=(0.9, 0.98))


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


def step_losses(
    model: VisLangModel, tokenizer, pixels: torch.Tensor, batch, text_cache: TextCache | None, captions: list[str],
    caption_weight: torch.Tensor, tcfg: dict[str, Any], generator: torch.Generator, ranks: Ranks,
) -> dict[str, torch.Tensor]:
    """Every objective's loss on one global batch; `pixels` are this rank's rows of it.

    The towers see this rank's rows; embeddings and token sequences are gathered so the
    contrastive loss and the hard negatives span the whole global batch. The matching and caption
    heads score this rank's share of the rows they pick (the same picks on every rank).
    """
    device = pixels.device
    texts = batch.texts[ranks.rows(len(batch.texts))]
    image_tokens, image_emb = model.image_features(pixels)
    if text_cache is not None:
        text_tokens, text_mask, text_pooled = _cached_text_batch(text_cache, texts, device)
    else:
        ids, text_mask = (t.to(device) for t in tokenizer(texts))
        text_tokens, text_pooled = model.text_tower(ids, text_mask)
    image_emb, text_emb = ranks.gather(image_emb.float(), model.project_text(text_pooled).float())
    positives = batch.positives.to(device)
    losses = {"loss_contrastive": contrastive_loss(image_emb, text_emb, model.logit_scale, positives)}
    if tcfg["link_weight"]:
        losses["loss_links"] = linked_image_loss(image_emb, model.logit_scale, batch.links.to(device))
    if model.matching is None and model.decoder is None:
        return losses

    if not tcfg["heads_train_towers"]:
        image_tokens, text_tokens = image_tokens.detach(), text_tokens.detach()
    if ranks.world > 1:  # ranks pad to different lengths; gathering needs one
        pad = model.cfg["text"]["max_length"] - text_tokens.shape[1]
        text_tokens, text_mask = F.pad(text_tokens, (0, 0, 0, pad)), F.pad(text_mask, (0, pad))
        image_tokens, text_tokens, text_mask = ranks.gather(image_tokens, text_tokens, text_mask.float())
    text_mask = text_mask.long()
    share = slice(ranks.rank, None, ranks.world)
    if model.matching is not None:
        similarity = (image_emb @ text_emb.t()).detach()
        rows = torch.randperm(len(batch.items), generator=generator)[: tcfg["matching_batch"] or None]
        losses["loss_matching"], _ = matching_loss(model.matching, image_tokens, text_tokens, text_mask,
                                                   similarity, positives, generator, rows[share])
    if model.decoder is not None:
        rows = caption_rows(batch.items, caption_weight, tcfg["caption_batch"], generator)[share]
        ids, _ = tokenizer([captions[batch.items[i]] for i in rows.tolist()])
        losses["loss_caption"] = model.caption_loss(image_tokens[rows.to(device)], ids.to(device))
    return losses


def optimizer_step(model: VisLangModel, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float,
                   ranks: Ranks) -> torch.Tensor:
    """Backward, average over ranks, clip, update; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ranks.average_gradients(model)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return grad_norm


def train(config: dict[str, Any], data: str | None = None, output: str | Path = "runs/latest", resume: bool = False) -> Path:
    """Train a model as `config` says; returns the final checkpoint folder.

    Under `torchrun` every process runs this; rank 0 alone writes logs and checkpoints.
    """
    tcfg, dcfg = config["train"], config["data"]
    run_dir = Path(output)
    resume_from = find_checkpoint(run_dir) if resume else None
    if not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output")
    data_location = find_data_dir(data or dcfg["path"])
    config = {**config, "data": {**dcfg, "path": str(data_location)}}
    _seed_everything(config["seed"])
    if tcfg["threads"]:
        torch.set_num_threads(tcfg["threads"])
    ranks = distributed.setup(tcfg["device"])
    device = ranks.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    # Data: every training-split image, decoded once into memory (rank 0 first: the others then
    # read its on-disk cache instead of decoding again).
    catalog = read_catalog(data_location)
    items = catalog.select("train")
    image_size = config["model"]["image"]["image_size"]
    bank_size = round(image_size * CACHE_MARGIN)
    for turn in (True, False):
        if ranks.main == turn:
            bank, decoded = build_image_bank([item.image for item in items], bank_size, dcfg["cache_dir"])
        ranks.barrier()
    items = [items[i] for i in decoded]
    sampler = PairSampler(items, dcfg, tcfg["batch_size"], config["seed"])
    local_rows = ranks.rows(sampler.batch_size)

    # Model, optimiser, and (for a frozen text tower) the text features of every training text.
    captions = [item.caption for item in items]
    model, tokenizer = create_model(config["model"], captions=captions)
    config = {**config, "model": model.cfg}  # with the caption vocabulary, when the decoder built one
    model.to(device)
    optimizer = make_optimizer(model, tcfg)
    text_cache = None
    if model.text_frozen:
        all_texts = [t for it in items for t in it.texts]
        text_cache = text_feature_cache(model, tokenizer, all_texts, device, keep_tokens=model.matching is not None)
    caption_weight = inverse_caption_frequency(items)
    weights = loss_weights(tcfg)

    step, elapsed_before = 0, 0.0
    if resume_from is not None:
        load_model(model, str(resume_from / "model.safetensors"), device=str(device))
        state = torch.load(resume_from / "trainer_state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = state["step"], state["elapsed"]
        print(f"resuming from {resume_from} at step {step}")
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    logger = RunLogger(run_dir) if ranks.main else NullLogger()

    steps_per_epoch = len(sampler)
    total_steps = tcfg["epochs"] * steps_per_epoch
    budget_s = tcfg["max_minutes"] * 60 if tcfg["max_minutes"] else None
    start_time = time.time() - elapsed_before

    def progress() -> float:
        by_time = ranks.from_main(time.time() - start_time) / budget_s if budget_s else 0.0
        return max(step / total_steps, by_time)

    def checkpoint() -> Path | None:
        if not ranks.main:
            return None
        state = {"optimizer": optimizer.state_dict(), "step": step, "elapsed": time.time() - start_time}
        return save_checkpoint(run_dir, step, model, tokenizer, config, state)

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", mininterval=1.0, disable=not ranks.main)
    last_saved = step
    try:
        while step < total_steps and progress() < 1.0:
            epoch, skip = divmod(step, steps_per_epoch)
            for batch in sampler.epoch(epoch):
                if skip:  # resuming mid-epoch: the sampler replays the epoch's order, skip what was done
                    skip -= 1
                    continue
                tick = time.time()
                lr = lr_at(step, progress(), tcfg["lr"], tcfg["warmup_steps"], tcfg["min_lr_ratio"])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                generator = torch.Generator().manual_seed(config["seed"] * 1_000_003 + step)
                # Every rank crops the whole batch with the same generator (the same crops as one
                # process) and keeps its rows; the later draws stay in step across ranks too.
                pixels = augment(bank, batch.items, image_size, dcfg["augment"]["scale"], dcfg["augment"]["flip"], generator)
                with autocast:
                    losses = step_losses(model, tokenizer, pixels[local_rows].to(device, non_blocking=True), batch, text_cache,
                                         captions, caption_weight, tcfg, generator, ranks)
                    loss = sum(weights[name] * value for name, value in losses.items())
                grad_norm = optimizer_step(model, optimizer, loss, tcfg["grad_clip"], ranks)
                step += 1
                bar.update(1)
                samples_per_s = len(batch.items) / (time.time() - tick)
                bar.set_postfix(loss=f"{loss.item():.3f}", samples_s=f"{samples_per_s:.0f}")
                if step % tcfg["log_every"] == 0 or step == 1:
                    logged = ranks.mean({"loss": loss.item(), **{k: v.item() for k, v in losses.items()}})
                    logger.log(step, epoch=epoch, **logged, lr=lr, grad_norm=float(grad_norm),
                               temperature=float(model.logit_scale.detach().exp().reciprocal()), samples_per_s=samples_per_s,
                               elapsed_s=time.time() - start_time)
                if step % tcfg["checkpoint_every"] == 0:
                    checkpoint()
                    last_saved = step
                if step >= total_steps or progress() >= 1.0:
                    break
            if tcfg["eval_every_epochs"] and (epoch + 1) % tcfg["eval_every_epochs"] == 0 and step < total_steps:
                _log_eval(model, tokenizer, config, device, catalog, logger, step, ranks)
    except KeyboardInterrupt:
        bar.close()
        if ranks.main:
            print(f"\ninterrupted at step {step}; saved {checkpoint()} (continue with --resume)")
        raise
    bar.close()
    if step != last_saved:
        checkpoint()
    _log_eval(model, tokenizer, config, device, catalog, logger, step, ranks)  # ends when every rank is there
    logger.close()
    if ranks.main:
        plot_curves(run_dir)
    distributed.teardown()
    return find_checkpoint(run_dir)


def _log_eval(model, tokenizer, config, device, catalog, logger, step: int, ranks: Ranks) -> None:
    if ranks.main:
        model.eval()
        metrics = evaluate(VisLang(model, tokenizer, config, device), catalog, "val")
        model.train()
        logger.log(step, event="eval", split="val", **metrics)
        print("val: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    ranks.barrier()
