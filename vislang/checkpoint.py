"""Checkpoints: a folder per save, written under a temporary name and renamed into place.

A checkpoint folder holds everything needed to rebuild the model with no other input:
  model.safetensors   all weights (the frozen text tower's too)
  config.yaml         the resolved run config
  text/               the tokenizer's files and the text tower's architecture (Hugging Face config.json)
  decoder/            the caption decoder's BERT config.json, when the model has a decoder
  trainer_state.pt    optimizer, step and clock, for --resume (absent in exported checkpoints)
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from .config import ConfigError, one_line, resolve
from .models import Tokenizer, VisLangModel, create_model

LATEST = "latest"


class CheckpointError(FileNotFoundError):
    """No usable checkpoint at the given path."""


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: VisLangModel,
    tokenizer: Tokenizer,
    config: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"step-{step:07d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tokenizer.save(tmp / "text")
    model.text_tower.save_architecture(tmp / "text")
    if model.decoder is not None:
        model.decoder.save_architecture(tmp / "decoder")
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = folder / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, folder / LATEST)
    _prune(folder, keep)
    return final


def _prune(folder: Path, keep: int) -> None:
    saved = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in saved[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or a run folder's latest checkpoint."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    pointer = path / "checkpoints" / LATEST
    if pointer.is_file():
        found = path / "checkpoints" / pointer.read_text().strip()
        if (found / "model.safetensors").is_file():
            return found
    raise CheckpointError(
        f"no checkpoint at {path}: expected a checkpoint folder (with model.safetensors) "
        "or a run folder (with checkpoints/latest)"
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[VisLangModel, Tokenizer, dict[str, Any], Path]:
    """Rebuild model and tokenizer from a checkpoint, offline; returns them, the config and the folder."""
    folder = find_checkpoint(path)
    config = saved_config(folder)
    model_cfg = _offline_model_config(config["model"], folder)
    model, tokenizer = create_model(model_cfg)
    load_weights(model, folder, device)
    return model.to(device).eval(), tokenizer, config, folder


def saved_config(folder: Path) -> dict[str, Any]:
    """A checkpoint folder's resolved config; a missing or damaged one is a CheckpointError."""
    try:
        return resolve(yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, TypeError, AttributeError, ConfigError) as err:
        raise CheckpointError(f"{folder}: config.yaml is missing or not a vislang config ({one_line(err)})") from err


# Weights of parts that earlier versions had (their config keys are config.REMOVED_KEYS): an old
# checkpoint's are left unread, so old runs still load.
REMOVED_WEIGHTS = ("query_bank.", "neighbours.", "decoder.pointer.", "matching.overlap_weights")


def load_weights(model: VisLangModel, folder: Path, device: str | torch.device = "cpu") -> None:
    """Load a checkpoint's weights into `model`; a damaged file, or weights of another shape than
    the model (a run resumed with a changed model config), is a CheckpointError saying which."""
    try:
        missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False, device=str(device))
    except SafetensorError as err:  # a truncated or overwritten file
        raise CheckpointError(f"{folder}: model.safetensors is damaged ({err}); use another checkpoint or retrain") from err
    except RuntimeError as err:  # mis-shaped tensors
        raise _unfit(folder, model) from err
    if missing or any(not name.startswith(REMOVED_WEIGHTS) for name in unexpected):
        raise _unfit(folder, model)


def _unfit(folder: Path, model: VisLangModel) -> CheckpointError:
    changed = _changed_keys(folder, model.cfg)
    which = f" (model config changed: {'; '.join(changed)})" if changed else ""
    return CheckpointError(f"{folder}: its weights do not fit the model this config builds{which}; "
                           "resume with the run's own model settings or train into a new --output")


def _changed_keys(folder: Path, model_cfg: dict[str, Any]) -> list[str]:
    """'model.KEY: saved -> now' for each model setting that differs from the checkpoint's config."""
    try:
        saved = saved_config(folder)["model"]
    except CheckpointError:  # only the message is at stake: an unreadable config names no keys
        return []

    def leaves(cfg: dict[str, Any], where: str = "model.") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in cfg.items():
            if isinstance(value, dict) and key != "kwargs":
                out.update(leaves(value, f"{where}{key}."))
            elif key != "token_ids":  # filled in from the data, not set
                out[f"{where}{key}"] = value
        return out

    before, now = leaves(saved), leaves(model_cfg)
    return [f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in sorted(now) if before.get(key) != now.get(key)]


def _offline_model_config(model_cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The same architecture, built from files in the checkpoint instead of a hub or package."""
    out = {**model_cfg, "image": {**model_cfg["image"], "pretrained": False}}
    text = {**model_cfg["text"], "pretrained": False}
    if (folder / "text" / "config.json").is_file():
        text["name"] = str(folder / "text")
    out["text"] = text
    if (folder / "decoder" / "config.json").is_file():
        out["decoder"] = {**model_cfg["decoder"], "source": str(folder / "decoder"), "pretrained": False}
    return out
