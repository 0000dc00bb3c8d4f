"""The training loop, top to bottom: data, model, optimiser, steps, checkpoints, evaluation.

The run stops at `train.epochs` or at `train.max_minutes` of wall clock, whichever comes first;
the learning-rate schedule follows whichever is further along, so a time-capped run still
finishes its cosine decay. What the loop counts lives in one `RunState` (train/state.py), which a
checkpoint saves with the optimizer and every RNG, so that `--resume` after a kill continues as
the uninterrupted run would have. A step whose loss or gradients are not finite is skipped and
counted (train/guard.py); `train.max_nonfinite_steps` of them in a row stop the run.
"""
from __future__ import annotations

import contextlib
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from ..api import VisLang
from ..data import find_data_dir, read_catalog
from ..data.pairs import PairSampler
from ..data.pixels import augment, build_image_bank
from ..eval import evaluate
from ..models import create_model
from ..atomic import write_text_atomic
from ..checkpoint import find_checkpoint, load_weights, save_checkpoint
from ..config import ConfigError
from . import distributed
from .distributed import Ranks
from .guard import NonFiniteGuard
from .heads_phase import embed_views, train_heads
from .locked_views import check_locked_views, compute_locked_views, draw_views
from .logger import NullLogger, RunLogger, plot_curves
from .schedule import lr_at
from .state import RunState
from .step import (check_accumulation, forward_backward, inverse_caption_frequency, loss_weights, make_optimizer,
                   set_lr, speed_up, text_feature_cache, TrainingDiverged)

CACHE_MARGIN = 1.15  # the image bank is a bit larger than the crops, so crops can move


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        if tcfg["threads"] > (os.cpu_count() or 1):  # checked here, not in the config: a run's config may move machines
            raise ConfigError(f"train.threads={tcfg['threads']} is more than this machine's {os.cpu_count()} CPUs")
        torch.set_num_threads(tcfg["threads"])
    ranks = distributed.setup(tcfg["device"])
    device = ranks.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    # Data: every training-split image, decoded once into a bank cached on disk (the ranks share
    # the decoding, by shard). Every rank maps the whole bank, since it draws the whole global batch.
    catalog = read_catalog(data_location)
    items = catalog.select("train")
    image_size = config["model"]["image"]["image_size"]
    bank_size = round(image_size * CACHE_MARGIN)
    bank, decoded = build_image_bank([item.image for item in items], bank_size, dcfg["cache_dir"],
                                     rank=ranks.rank, world=ranks.world, barrier=ranks.barrier)
    items = [items[i] for i in decoded]
    sampler = PairSampler(items, dcfg, tcfg["batch_size"], config["seed"])
    local_rows = ranks.rows(sampler.batch_size)

    # Model, optimiser, and (for a frozen text tower) the text features of every training text.
    captions = [item.caption for item in items]
    model, tokenizer = create_model(config["model"], captions=captions)
    config = {**config, "model": model.cfg}  # with the caption vocabulary, when the decoder built one
    check_accumulation(model, tcfg, local_rows.stop - local_rows.start)
    model.to(device)
    memory_format = speed_up(model, tcfg)
    check_locked_views(model, tcfg["locked_views"])
    locked = compute_locked_views(model, bank, image_size, tcfg["locked_views"], dcfg["augment"], config["seed"], device,
                                  memory_format) \
        if tcfg["locked_views"] else None
    optimizer = make_optimizer(model, tcfg)
    text_cache = None
    if model.text_frozen:
        all_texts = [t for it in items for t in it.texts]
        text_cache = text_feature_cache(model, tokenizer, all_texts, device, keep_tokens=model.matching is not None)
    caption_weight = inverse_caption_frequency(items)
    weights = loss_weights(tcfg)

    state = RunState()
    if resume_from is not None:
        load_weights(model, resume_from, device)
        state = RunState.restore(resume_from, optimizer)  # and every RNG, as the checkpoint left them
        print(f"resuming from {resume_from} at step {state.step}")
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    # a resumed run's log is cut back to its checkpoint: the steps after it are taken again
    logger = RunLogger(run_dir, resumed_at=state.step if resume_from else None) if ranks.main else NullLogger()
    guard = NonFiniteGuard(tcfg["max_nonfinite_steps"], state)

    steps_per_epoch = len(sampler)
    total_steps = tcfg["epochs"] * steps_per_epoch
    heads_phase = tcfg["heads_phase"]["steps"] > 0 and (model.matching is not None or model.decoder is not None)
    budget_s = tcfg["max_minutes"] * 60 if tcfg["max_minutes"] else None
    if budget_s and heads_phase:
        budget_s -= (tcfg["heads_phase"]["minutes"] or 0) * 60
        if budget_s <= 0:
            raise ConfigError(f"train.heads_phase.minutes ({tcfg['heads_phase']['minutes']}) leaves nothing of "
                              f"train.max_minutes ({tcfg['max_minutes']}) to the towers")
    start_time = time.time() - state.elapsed

    def progress() -> float:
        by_time = ranks.from_main(time.time() - start_time) / budget_s if budget_s else 0.0
        return max(state.step / total_steps, by_time)

    def checkpoint() -> Path | None:
        state.last_saved = state.step
        if not ranks.main:
            return None
        return save_checkpoint(run_dir, state.step, model, tokenizer, config,
                               state.checkpoint_state(optimizer, time.time() - start_time))

    model.train()
    bar = tqdm(total=total_steps, initial=state.step, desc="training", unit="step", mininterval=1.0, disable=not ranks.main)
    try:
        while state.step < total_steps and progress() < 1.0:
            epoch, skip = divmod(state.step, steps_per_epoch)
            for batch in sampler.epoch(epoch):
                if skip:  # resuming mid-epoch: the sampler replays the epoch's order, skip what was done
                    skip -= 1
                    continue
                tick = time.time()
                lr = lr_at(state.step, progress(), tcfg["lr"], tcfg["warmup_steps"], tcfg["min_lr_ratio"])
                set_lr(optimizer, lr)
                generator = torch.Generator().manual_seed(config["seed"] * 1_000_003 + state.step)
                # Every rank crops the whole batch with the same generator (the same crops as one
                # process) and keeps its rows; the later draws stay in step across ranks too.
                if locked is None:
                    pixels = augment(bank, batch.items, image_size, dcfg["augment"]["scale"], dcfg["augment"]["flip"], generator)
                else:  # the locked part's output for one cached view of each image
                    pixels = draw_views(locked, batch.items, generator)
                pixels = pixels[local_rows].to(device, non_blocking=True, memory_format=memory_format)
                guard.before_forward(model)
                losses = forward_backward(model, tokenizer, pixels, batch, text_cache, captions, caption_weight, tcfg,
                                          generator, ranks, autocast, heads=not heads_phase, locked=locked is not None)
                loss = sum(weights[name] * value for name, value in losses.items())
                # the mean over ranks: a rank whose loss is not finite makes every rank skip the step
                logged = ranks.mean({"loss": loss.item(), **{k: v.item() for k, v in losses.items()}})
                grad_norm = guard.step(model, optimizer, logged["loss"], tcfg["grad_clip"], ranks)
                state.step += 1
                bar.update(1)
                samples_per_s = len(batch.items) / (time.time() - tick)
                if grad_norm is None:  # skipped: the weights and the optimizer are as they were
                    bar.set_postfix(loss="skipped", skipped=state.nonfinite_skipped)
                    logger.log(state.step, event="skipped", reason=guard.last_reason,
                               nonfinite_skipped=state.nonfinite_skipped)
                else:
                    bar.set_postfix(loss=f"{logged['loss']:.3f}", samples_s=f"{samples_per_s:.0f}")
                    if state.step % tcfg["log_every"] == 0 or state.step == 1:
                        logger.log(state.step, epoch=epoch, **logged, lr=lr, grad_norm=float(grad_norm),
                                   temperature=float(model.logit_scale.detach().exp().reciprocal()),
                                   nonfinite_skipped=state.nonfinite_skipped, samples_per_s=samples_per_s,
                                   elapsed_s=time.time() - start_time)
                if state.step % tcfg["checkpoint_every"] == 0:
                    checkpoint()
                if state.step >= total_steps or progress() >= 1.0:
                    break
            if tcfg["eval_every_epochs"] and (epoch + 1) % tcfg["eval_every_epochs"] == 0 and state.step < total_steps:
                _log_eval(model, tokenizer, config, device, catalog, logger, state.step, ranks)
    except KeyboardInterrupt:
        bar.close()
        if ranks.main:
            print(f"\ninterrupted at step {state.step}; saved {checkpoint()} (continue with --resume)")
        raise
    except TrainingDiverged as err:
        bar.close()
        kept = (f"its last checkpoint is step {state.last_saved} in {run_dir}" if state.last_saved
                else "no checkpoint was saved")
        raise TrainingDiverged(f"{err} at step {state.step + 1} (lr {lr:.3g}); {kept}. Lower train.lr or raise "
                               "train.warmup_steps and train again") from None
    bar.close()
    if state.step != state.last_saved:
        # The towers are done: a run stopped in what follows (the heads phase, the bank) resumes from here.
        saved = checkpoint()
        if saved is not None and heads_phase:
            print(f"towers trained; saved {saved} (a stopped heads phase starts over from it with --resume)")
    if heads_phase:
        # the finished image tower embeds every training image once per view (view 0 whole, as
        # inference sees it; the others training crops), and the heads train on those features
        views = embed_views(model, bank, image_size, tcfg["heads_phase"]["views"], dcfg["augment"], config["seed"],
                            device, memory_format, locked)
        train_heads(model, tokenizer, views, sampler, text_cache, captions, caption_weight, config, device,
                    ranks, logger, state.step, autocast)
        state.last_saved = -1  # the final checkpoint must carry the trained heads
    if state.step != state.last_saved:
        checkpoint()
    if state.nonfinite_skipped and ranks.main:
        warnings.warn(f"{state.nonfinite_skipped} of {state.step} steps were skipped for a non-finite loss or "
                      "gradients (metrics.jsonl: event 'skipped')")
    _log_eval(model, tokenizer, config, device, catalog, logger, state.step, ranks)  # ends when every rank is there
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
