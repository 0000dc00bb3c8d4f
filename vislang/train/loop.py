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
from .logger import RunLogger, plot_curves
from .schedule import lr_at

CACHE_MARGIN = 1.15  # the image bank is a bit larger than the crops, so crops can move


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and the temperature (as in CLIP)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


TextCache = dict[str, tuple[torch.Tensor, torch.Tensor]]  # text -> (pooled [C], tokens [L, C])


@torch.inference_mode()
def _text_feature_cache(model: VisLangModel, tokenizer, texts: list[str], device, keep_tokens: bool) -> TextCache:
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


def train(config: dict[str, Any], data: str | None = None, output: str | Path = "runs/latest", resume: bool = False) -> Path:
    """Train a model as `config` says; returns the final checkpoint folder."""
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
    device = torch.device(tcfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    # Data: every training-split image, decoded once into memory.
    catalog = read_catalog(data_location)
    items = catalog.select("train")
    image_size = config["model"]["image"]["image_size"]
    bank, decoded = build_image_bank([item.image for item in items], round(image_size * CACHE_MARGIN), dcfg["cache_dir"])
    items = [items[i] for i in decoded]
    sampler = PairSampler(items, dcfg, tcfg["batch_size"], config["seed"])

    # Model, optimiser, and (for a frozen text tower) the text features of every training text.
    model, tokenizer = create_model(config["model"])
    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg["weight_decay"]), lr=tcfg["lr"], betas=(0.9, 0.98))
    text_cache = None
    if model.text_frozen:
        all_texts = [t for it in items for t in it.texts]
        text_cache = _text_feature_cache(model, tokenizer, all_texts, device, keep_tokens=model.matching is not None)
    weights = {"loss_contrastive": 1.0, "loss_links": tcfg["link_weight"], "loss_matching": tcfg["matching_weight"],
               "loss_caption": tcfg["caption_weight"]}

    step, elapsed_before = 0, 0.0
    if resume_from is not None:
        load_model(model, str(resume_from / "model.safetensors"), device=str(device))
        state = torch.load(resume_from / "trainer_state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = state["step"], state["elapsed"]
        print(f"resuming from {resume_from} at step {step}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    logger = RunLogger(run_dir)

    steps_per_epoch = len(sampler)
    total_steps = tcfg["epochs"] * steps_per_epoch
    budget_s = tcfg["max_minutes"] * 60 if tcfg["max_minutes"] else None
    start_time = time.time() - elapsed_before

    def progress() -> float:
        by_time = (time.time() - start_time) / budget_s if budget_s else 0.0
        return max(step / total_steps, by_time)

    def checkpoint() -> Path:
        state = {"optimizer": optimizer.state_dict(), "step": step, "elapsed": time.time() - start_time}
        return save_checkpoint(run_dir, step, model, tokenizer, config, state)

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", mininterval=1.0)
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
                pixels = augment(bank, batch.items, image_size, dcfg["augment"]["scale"], dcfg["augment"]["flip"], generator)
                with autocast:
                    image_tokens, image_emb = model.image_features(pixels.to(device, non_blocking=True))
                    if text_cache is not None:
                        text_tokens, text_mask, text_pooled = _cached_text_batch(text_cache, batch.texts, device)
                    else:
                        ids, text_mask = (t.to(device) for t in tokenizer(batch.texts))
                        text_tokens, text_pooled = model.text_tower(ids, text_mask)
                    text_emb = model.project_text(text_pooled)
                    positives = batch.positives.to(device)
                    losses = {"loss_contrastive": contrastive_loss(image_emb.float(), text_emb.float(), model.logit_scale, positives)}
                    if tcfg["link_weight"]:
                        losses["loss_links"] = linked_image_loss(image_emb.float(), model.logit_scale, batch.links.to(device))
                    if model.matching is not None:
                        similarity = (image_emb @ text_emb.t()).detach()
                        losses["loss_matching"], _ = matching_loss(model.matching, image_tokens, text_tokens, text_mask,
                                                                   similarity, positives, generator)
                    if model.decoder is not None:
                        chosen = torch.randperm(len(batch.items), generator=generator)[: tcfg["caption_batch"] or None]
                        ids, _ = tokenizer([items[batch.items[i]].caption for i in chosen.tolist()])
                        losses["loss_caption"] = model.decoder.loss(image_tokens[chosen.to(device)], ids[:, : model.decoder.max_length].to(device))
                    loss = sum(weights[name] * value for name, value in losses.items())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
                optimizer.step()
                step += 1
                bar.update(1)
                samples_per_s = len(batch.items) / (time.time() - tick)
                bar.set_postfix(loss=f"{loss.item():.3f}", samples_s=f"{samples_per_s:.0f}")
                if step % tcfg["log_every"] == 0 or step == 1:
                    logger.log(step, epoch=epoch, loss=loss.item(), **{k: v.item() for k, v in losses.items()}, lr=lr, grad_norm=float(grad_norm),
                               temperature=float(model.logit_scale.detach().exp().reciprocal()), samples_per_s=samples_per_s,
                               elapsed_s=time.time() - start_time)
                if step % tcfg["checkpoint_every"] == 0:
                    checkpoint()
                    last_saved = step
                if step >= total_steps or progress() >= 1.0:
                    break
            if tcfg["eval_every_epochs"] and (epoch + 1) % tcfg["eval_every_epochs"] == 0 and step < total_steps:
                _log_eval(model, tokenizer, config, device, catalog, logger, step)
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted at step {step}; saved {checkpoint()} (continue with --resume)")
        raise
    bar.close()
    final = checkpoint() if step != last_saved else find_checkpoint(run_dir)
    _log_eval(model, tokenizer, config, device, catalog, logger, step)
    logger.close()
    plot_curves(run_dir)
    return final


def _log_eval(model, tokenizer, config, device, catalog, logger: RunLogger, step: int) -> dict[str, float]:
    model.eval()
    metrics = evaluate(VisLang(model, tokenizer, config, device), catalog, "val")
    model.train()
    logger.log(step, event="eval", split="val", **metrics)
    print("val: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    return metrics
