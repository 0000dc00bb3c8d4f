"""Training throughput: vislang's step (contrastive only, and all three objectives) against
open_clip_train's step on the same towers, batch and device, measured in one run.

What is timed, for each contender, is whole optimiser steps on real IKEA training batches
(`--data`, as vislang finds it), after `--warmup` untimed steps:
- vislang: the training loop's own code, with the recipe's model (`--config`, default ikea-cpu);
  "full" is the same recipe with the matching head and the caption decoder switched on. What a
  step feeds the image tower is what the loop feeds it:
  - with `train.locked_views` > 0 (a locked, pretrained tower with frozen BatchNorm statistics:
    the CPU recipe), the locked part's output, one of the cached views of each image
    (`draw_views`), and `forward_backward(..., locked=True)` runs only the unlocked groups. The
    cache is computed once before the timed steps, as the loop does before its first step, for
    the images the bench's batches draw; that one-off cost is reported apart (`locked_views`:
    its seconds, scaled to the whole training set, and the steps after which vislang's cache
    plus steps has cost less than open_clip's steps), never in a step time;
  - otherwise fresh crops from the in-memory image bank (`augment`) and the whole tower.
  A frozen text tower's features are cached (each training text encoded once, untimed). Its
  loss is the contrastive loss plus the room -> product photo loss (`train.link_weight`), and
  the model has the recipe's extras (`model.lexical`, the colour histogram when it has one).
- open_clip: `open_clip_train.train.train_one_epoch`, the function open_clip_train's main loop
  calls, on an open_clip `CustomTextCLIP` with the same towers: the recipe's timm image tower at
  its image size (a bundled pretrained tower with the same weights), locked as vislang's with
  `lock_image_tower(unlocked_groups, freeze_bn_stats)` (open_clip_train's --lock-image
  switches), and its Hugging Face text tower (MiniLM-L6, locked as with `--lock-text` when the
  recipe freezes it), mean pooling and the recipe's projections, ClipLoss, AdamW, gradient
  clipping. Every step runs the whole image trunk on the crops (the locked groups without
  gradients) and the text tower: open_clip has no cache of either. Its batches are the same
  crops, already tensors: its data pipeline is not timed.
- vislang_contrastive_ready_tensors: vislang's contrastive step fed its inputs (crops, or drawn
  views) made beforehand, so `data_pipeline_overhead` (fed step / ready-fed step - 1) is what
  vislang's input pipeline adds to a step.
So with locked views `ratio_contrastive` compares a step that reuses the frozen part's output
with one that recomputes it: read it with `locked_views`. `--variant train.locked_views=0` adds
vislang's full-pixel step of the same recipe. Neither side applies a learning-rate schedule
(the rate does not change a step's time).
The contenders run in turn, `--repeats` times, each repeat starting one contender later, so a
busy spell of the machine (or a slow first place) hits them all;
each figure is the median over the repeats. FLOPs per sample (forward + backward) come from
torch's FlopCounterMode on one step (what a timed step runs: not the cache); MFU is reported on
CUDA only (against the GPU's dense bf16 peak), as a CPU has no meaningful peak figure here.

`--variant` adds vislang contrastive contenders with some switches changed (speed options are
measured against the plain contrastive step of the same run).

Usage:  python bench/train_throughput.py [--device cpu|cuda] [--steps 8] [--repeats 3] [--variant k=v[,k=v]]... [--json]
        [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the vislang of this checkout

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from openclip_baseline import batch_norm_freezing_fixed, load_trunk_weights, machine, timm_architecture  # noqa: E402
from vislang.cli.main import config_path  # noqa: E402
from vislang.config import load_config  # noqa: E402
from vislang.data import find_data_dir, read_catalog  # noqa: E402
from vislang.data.pairs import PairSampler  # noqa: E402
from vislang.data.pixels import augment, build_image_bank  # noqa: E402
from vislang.models import create_model  # noqa: E402
from vislang.models.pretrained import BUNDLED_IMAGE_MODELS, bundled_weights_file  # noqa: E402
from vislang.models.text_tower import resolve_text_source  # noqa: E402
from vislang.train.distributed import Ranks  # noqa: E402
from vislang.train.locked_views import check_locked_views, compute_locked_views, draw_views  # noqa: E402
from vislang.train.loop import CACHE_MARGIN  # noqa: E402
from vislang.train.step import (  # noqa: E402
    forward_backward, inverse_caption_frequency, make_optimizer, optimizer_step, speed_up, text_feature_cache)

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense tensor-core peaks


class Contender:
    """Something that takes training steps: `run(n)` takes n steps; `flops_per_step` counts one."""

    name: str

    def run(self, steps: int) -> None: ...


@dataclass
class LockedViews:
    """The image tower's locked part's output for each view (`train.locked_views`) of the images
    the bench's batches draw, computed once, as the training loop computes it for every image."""

    features: torch.Tensor  # [V, M, C, H, W] bfloat16
    rows: dict[int, int]  # training item -> its row in `features`
    seconds: float  # what computing them took

    def draw(self, items: list[int], generator: torch.Generator) -> torch.Tensor:
        """One cached view of each item, as the loop's `draw_views`."""
        return draw_views(self.features, [self.rows[i] for i in items], generator)

    def summary(self, train_images: int) -> dict[str, Any]:
        per_image = self.seconds / len(self.rows)
        return {"views": self.features.shape[0], "images": len(self.rows), "s": self.seconds,
                "whole_train_set_s": per_image * train_images}


def locked_views(model, config: dict[str, Any], bank: torch.Tensor, batches, device: torch.device,
                 cache: dict[str, LockedViews]) -> LockedViews | None:
    """The views the recipe's step draws from (None without `train.locked_views`). Contenders whose
    locked part is the same (same tower settings, views, crops and seed) share them: computing
    them is the slow part of building a contender, and a step's time does not depend on whose
    weights made the features."""
    views = config["train"]["locked_views"]
    if not views:
        return None
    check_locked_views(model, views)
    key = json.dumps([config["model"]["image"], views, config["data"]["augment"], config["seed"]], sort_keys=True)
    if key not in cache:
        used = sorted({i for b in batches for i in b.items})
        start = time.perf_counter()
        features = compute_locked_views(model, bank[used], config["model"]["image"]["image_size"], views,
                                        config["data"]["augment"], config["seed"], device)
        cache[key] = LockedViews(features, {item: row for row, item in enumerate(used)}, time.perf_counter() - start)
    return cache[key]


class VisLangSteps(Contender):
    """The training loop's step; with `ready`, its inputs are made (and put on the device) beforehand."""

    def __init__(self, name: str, config: dict[str, Any], items, bank, batches, device: torch.device,
                 ready: bool = False, views_cache: dict[str, LockedViews] | None = None) -> None:
        self.name, self.config, self.bank, self.batches, self.device = name, config, bank, batches, device
        self.model, self.tokenizer = create_model(config["model"], captions=[i.caption for i in items])
        self.model.to(device).train()
        self.memory_format = speed_up(self.model, config["train"])
        self.optimizer = make_optimizer(self.model, config["train"])
        self.views = locked_views(self.model, config, bank, batches, device, {} if views_cache is None else views_cache)
        texts = sorted({t for b in batches for t in b.texts})
        self.cache = None
        if self.model.text_frozen:
            self.cache = text_feature_cache(self.model, self.tokenizer, texts, device, keep_tokens=self.model.matching is not None)
        self.captions = [i.caption for i in items]
        self.caption_weight = inverse_caption_frequency(items)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _nothing()
        self.ready = [self.device_inputs(b, torch.Generator().manual_seed(i + 1)) for i, b in enumerate(batches)] \
            if ready else None
        self.position = 0

    def inputs(self, batch, generator: torch.Generator) -> torch.Tensor:
        """What the loop feeds the image tower: one cached view of the locked part's output per
        image (`train.locked_views`), or fresh crops from the image bank."""
        if self.views is not None:
            return self.views.draw(batch.items, generator)
        aug = self.config["data"]["augment"]
        return augment(self.bank, batch.items, self.config["model"]["image"]["image_size"], aug["scale"], aug["flip"],
                       generator)

    def device_inputs(self, batch, generator: torch.Generator) -> torch.Tensor:
        return self.inputs(batch, generator).to(self.device, non_blocking=True, memory_format=self.memory_format)

    def run(self, steps: int) -> None:
        tcfg, ranks = self.config["train"], Ranks(device=self.device)
        for _ in range(steps):
            batch = self.batches[self.position % len(self.batches)]
            self.position += 1
            generator = torch.Generator().manual_seed(self.position)
            if self.ready is not None:
                pixels = self.ready[(self.position - 1) % len(self.ready)]
            else:
                pixels = self.device_inputs(batch, generator)
            forward_backward(self.model, self.tokenizer, pixels, batch, self.cache, self.captions, self.caption_weight,
                             tcfg, generator, ranks, self.autocast, locked=self.views is not None)
            optimizer_step(self.model, self.optimizer, tcfg["grad_clip"], ranks)
        _sync(self.device)

    def describe(self) -> str:
        """What one timed step runs, in words (for the report)."""
        image, views = self.config["model"]["image"], self.config["train"]["locked_views"]
        tower = f"{image['name']} @ {image['image_size']}px{lock_words(image)}"
        step = (f"one of {views} cached views of the locked part's output per image, unlocked groups only" if views
                else "fresh crops through the whole tower")
        text = "frozen text tower's features cached" if self.cache is not None else "text tower trained"
        return f"vislang: {tower}; {step}; {text}"


class OpenClipSteps(Contender):
    """open_clip_train's `train_one_epoch` over ready-made tensor batches."""

    def __init__(self, config: dict[str, Any], crops: list[torch.Tensor], texts: list[list[str]], device: torch.device) -> None:
        import open_clip
        from open_clip_train.train import train_one_epoch

        self.name, self.device, self.train_one_epoch = "open_clip", device, train_one_epoch
        m = config["model"]
        image = m["image"]
        if image["kind"] != "timm" or m["text"]["kind"] != "hf":
            raise SystemExit("this bench pairs a timm image tower with a Hugging Face text tower (the recipes' towers)")
        text_source = resolve_text_source(m["text"]["name"])
        self.model = open_clip.CustomTextCLIP(
            embed_dim=m["embed_dim"],
            vision_cfg={"timm_model_name": timm_architecture(image["name"]), "timm_model_pretrained": False,
                        "timm_pool": "avg", "timm_proj": "mlp" if m["head"] == "mlp" else "linear",
                        "timm_drop_path": image["kwargs"].get("drop_path_rate"), "image_size": image["image_size"]},
            text_cfg={"hf_model_name": text_source, "hf_tokenizer_name": text_source, "hf_model_pretrained": True,
                      "hf_proj_type": "mlp" if m["head"] == "mlp" else "linear", "hf_pooler_type": "mean_pooler",
                      "context_length": m["text"]["max_length"]},
            output_dict=True,  # as open_clip_train builds it
        ).to(device)
        if image["pretrained"] and image["name"] in BUNDLED_IMAGE_MODELS:
            load_trunk_weights(self.model, bundled_weights_file(image["name"]))
        if image["lock"]:
            with batch_norm_freezing_fixed():
                self.model.lock_image_tower(unlocked_groups=image["unlocked_groups"],
                                            freeze_bn_stats=image["freeze_bn_stats"])
        if m["text"]["freeze"]:
            self.model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
        self.description = describe_open_clip(config)
        tokenizer = open_clip.tokenizer.HFTokenizer(text_source, context_length=m["text"]["max_length"])
        self.batches = [(images, tokenizer(t)) for images, t in zip(crops, texts)]
        t = config["train"]
        self.loss = open_clip.ClipLoss()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=t["lr"], betas=(0.9, 0.98), weight_decay=t["weight_decay"])
        self.args = SimpleNamespace(device=str(device), precision="amp_bf16" if device.type == "cuda" else "fp32",
                                    distill=False, accum_freq=1, skip_scheduler=True, horovod=False,
                                    grad_clip_norm=t["grad_clip"], log_every_n_steps=10**9, batch_size=t["batch_size"],
                                    world_size=1, rank=0, local_rank=0, wandb=False)
        self.epoch = 0

    def run(self, steps: int) -> None:
        batches = [self.batches[(self.epoch * steps + i) % len(self.batches)] for i in range(steps)]
        loader = SimpleNamespace(dataloader=_Loader(batches), set_epoch=lambda epoch: None)
        self.train_one_epoch(self.model, {"train": loader}, self.loss, self.epoch, self.optimizer, None, None, None, self.args)
        self.epoch += 1
        _sync(self.device)


def lock_words(image: dict[str, Any]) -> str:
    """How much of the image tower trains, in words (the same switches on both sides)."""
    return f", locked but for its last {image['unlocked_groups']} groups" if image["lock"] else ""


def describe_open_clip(config: dict[str, Any]) -> str:
    """What one of open_clip's timed steps runs, in words (for the report)."""
    image, text = config["model"]["image"], config["model"]["text"]
    return (f"open_clip: timm {timm_architecture(image['name'])} @ {image['image_size']}px{lock_words(image)}; "
            f"ready crops through the whole trunk every step; text tower run every step"
            f"{' (locked)' if text['freeze'] else ''}")


class _Loader(list):
    @property
    def num_batches(self) -> int:
        return len(self)

    @property
    def num_samples(self) -> int:
        return sum(len(b[0]) for b in self)


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(run_one: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        run_one()
    return int(counter.get_total_flops())


def locked_cost(cost: dict[str, Any], step_s: dict[str, float]) -> dict[str, Any]:
    """The cache's one-off cost, and after how many steps vislang's cache plus steps has cost less
    than open_clip's steps (None when vislang's step is not the faster)."""
    saved = step_s["open_clip"] - step_s["vislang_contrastive"]
    return {**cost, "break_even_steps": cost["whole_train_set_s"] / saved if saved > 0 else None}


def training_batches(config: dict[str, Any], data: str | None, count: int) -> tuple[list, torch.Tensor, list]:
    """The training items, their image bank, and the first `count` batches of the recipe's sampler."""
    items = read_catalog(find_data_dir(data)).select("train")
    size = config["model"]["image"]["image_size"]
    bank, decoded = build_image_bank([i.image for i in items], round(size * CACHE_MARGIN), config["data"]["cache_dir"])
    items = [items[i] for i in decoded]
    sampler = PairSampler(items, config["data"], config["train"]["batch_size"], config["seed"])
    return items, bank, list(sampler.epoch(0))[:count]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="ikea-cpu", help="vislang recipe whose towers, batch and optimiser both sides use")
    parser.add_argument("--data", help="catalog folder or shards (default: $VISLANG_DATA, then ../shared/data/ikea)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per contender per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--variant", action="append", default=[], metavar="key=value[,key=value]",
                        help="also time vislang contrastive with these overrides (repeatable), e.g. train.compile=true")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every contender, "
                        "e.g. model.text.freeze=false to train the text tower on both sides")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    logging.getLogger().setLevel(logging.WARNING)

    overrides = args.overrides + ([f"train.batch_size={args.batch_size}"] if args.batch_size else [])
    contrastive = load_config(config_path(args.config), overrides + ["model.matching.enabled=false", "model.decoder.enabled=false"])
    full = load_config(config_path(args.config), overrides + ["model.matching.enabled=true", "model.decoder.enabled=true"])
    items, bank, batches = training_batches(contrastive, args.data, args.warmup + args.steps)
    size, aug = contrastive["model"]["image"]["image_size"], contrastive["data"]["augment"]
    crops = [augment(bank, b.items, size, aug["scale"], aug["flip"], torch.Generator().manual_seed(i)).to(device)
             for i, b in enumerate(batches)]

    torch.manual_seed(0)
    views: dict[str, LockedViews] = {}  # shared by the contenders whose locked part is the same
    contenders = [VisLangSteps("vislang_contrastive", contrastive, items, bank, batches, device, views_cache=views),
                  VisLangSteps("vislang_full", full, items, bank, batches, device, views_cache=views),
                  OpenClipSteps(contrastive, crops, [b.texts for b in batches], device),
                  VisLangSteps("vislang_contrastive_ready_tensors", contrastive, items, bank, batches, device, ready=True,
                               views_cache=views)]
    for variant in args.variant:
        changed = load_config(config_path(args.config), overrides + ["model.matching.enabled=false",
                              "model.decoder.enabled=false", *variant.split(",")])
        contenders.append(VisLangSteps(variant, changed, items, bank, batches, device, views_cache=views))
    flops = {c.name: step_flops(lambda c=c: c.run(1)) / len(batches[0].items) for c in contenders[:3]}
    for c in contenders:
        c.run(args.warmup)
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for repeat in range(args.repeats):
        shift = repeat % len(contenders)  # each repeat starts with another contender: no one always goes first
        for c in contenders[shift:] + contenders[:shift]:
            start = time.perf_counter()
            c.run(args.steps)
            times[c.name].append((time.perf_counter() - start) / args.steps)
            print(f"repeat {repeat + 1}/{args.repeats} {c.name}: {times[c.name][-1]:.3f} s/step", file=sys.stderr)

    batch = len(batches[0].items)
    step_s = {name: statistics.median(values) for name, values in times.items()}
    result: dict[str, Any] = {
        "machine": machine() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "device": device.type, "config": args.config, "overrides": args.overrides, "batch_size": batch, "steps": args.steps, "repeats": args.repeats,
        "runs": {"vislang": contenders[0].describe(), "open_clip": contenders[2].description},
        "step_s": step_s, "step_s_all": times,
        "vislang_contrastive_samples_per_s": batch / step_s["vislang_contrastive"],
        "vislang_full_samples_per_s": batch / step_s["vislang_full"],
        "openclip_samples_per_s": batch / step_s["open_clip"],
        "ratio_contrastive": step_s["open_clip"] / step_s["vislang_contrastive"],
        "full_over_contrastive_step": step_s["vislang_full"] / step_s["vislang_contrastive"],
        "flops_per_sample": flops,
        # the step fed from the image bank (crops made each step) over the step fed ready tensors:
        # what the data pipeline adds
        "data_pipeline_overhead": step_s["vislang_contrastive"] / step_s["vislang_contrastive_ready_tensors"] - 1,
        # each variant's samples/s, and its speed relative to the contrastive step without it
        "variants": {v: {"samples_per_s": batch / step_s[v], "speedup": step_s["vislang_contrastive"] / step_s[v]}
                     for v in args.variant},
    }
    if contenders[0].views is not None:
        result["locked_views"] = locked_cost(contenders[0].views.summary(len(items)), step_s)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        result["mfu"] = {n: (flops[n] * batch / step_s[n]) / peak for n in step_s} if peak else None
    if not args.json:
        print("\n".join(result["runs"].values()))
        if "locked_views" in result:
            print(f"locked_views (once, before training): {json.dumps(result['locked_views'])}")
        for key in ("vislang_contrastive_samples_per_s", "vislang_full_samples_per_s", "openclip_samples_per_s",
                    "ratio_contrastive", "full_over_contrastive_step", "data_pipeline_overhead"):
            print(f"{key}: {result[key]:.3f}")
        for variant, figures in result["variants"].items():
            print(f"{variant}: {figures['samples_per_s']:.1f} samples/s, {figures['speedup']:.3f}x the contrastive step")
    else:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
