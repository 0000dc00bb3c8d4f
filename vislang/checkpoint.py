"""Checkpoints: a folder per save, written under a temporary name and renamed into place.

A checkpoint folder holds everything needed to rebuild the model with no other input, and
nothing that is unpickled:
  model.safetensors          all weights (the frozen text tower's too)
  config.yaml                the resolved run config
  text/                      the tokenizer's files and the text tower's architecture (Hugging Face config.json)
  decoder/                   the caption decoder's BERT config.json, when the model has a decoder
  trainer_state.safetensors  the optimizer's tensors and the torch RNG states, for --resume
  trainer_state.json         step, clock, non-finite counts, the optimizer's settings, the Python and
                             NumPy RNG states (train/state.py); both absent in exported checkpoints

`checkpoints/latest` names the newest folder. Every file is written atomically (vislang/atomic.py):
a run killed while saving keeps its previous checkpoint, and `find_checkpoint` falls back to the
newest whole folder should `latest` name one that is gone.
"""
from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from .atomic import atomic_folder, fault_point, remove_stale_temporaries, write_text_atomic
from .config import ConfigError, one_line, resolve
from .models import Tokenizer, VisLangModel, create_model

LATEST = "latest"
STEP_FOLDER = re.compile(r"step-\d{7}")
TRAINER_TENSORS, TRAINER_META = "trainer_state.safetensors", "trainer_state.json"
LEGACY_TRAINER_STATE = "trainer_state.pt"  # earlier versions' torch.save of the optimizer, step and clock

TrainerState = tuple[dict[str, torch.Tensor], dict[str, Any]]  # (tensors, JSON-able rest)


class CheckpointError(FileNotFoundError):
    """No usable checkpoint at the given path."""


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: VisLangModel,
    tokenizer: Tokenizer,
    config: dict[str, Any],
    trainer_state: TrainerState | None = None,
    keep: int = 2,
) -> Path:
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"step-{step:07d}"
    with atomic_folder(final, "checkpoint") as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        fault_point("checkpoint", tmp)  # a save stopped half-way, weights written and nothing else
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        tokenizer.save(tmp / "text")
        model.text_tower.save_architecture(tmp / "text")
        if model.decoder is not None:
            model.decoder.save_architecture(tmp / "decoder")
        if trainer_state is not None:
            tensors, meta = trainer_state
            save_file(tensors, str(tmp / TRAINER_TENSORS))
            (tmp / TRAINER_META).write_text(json.dumps(meta))
    write_text_atomic(folder / LATEST, final.name, "checkpoint")
    _prune(folder, keep)
    return final


def load_trainer_state(folder: Path) -> TrainerState:
    """The trainer state a checkpoint saved for --resume; a missing or damaged one is a CheckpointError."""
    if not (folder / TRAINER_META).is_file() and (folder / LEGACY_TRAINER_STATE).is_file():
        return _legacy_trainer_state(folder / LEGACY_TRAINER_STATE)
    try:
        meta = json.loads((folder / TRAINER_META).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / TRAINER_TENSORS))
    except FileNotFoundError as err:
        raise CheckpointError(f"{folder} holds no trainer state (an exported checkpoint?): it cannot be resumed; "
                              "train into a new --output") from err
    except (OSError, ValueError, SafetensorError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{folder}: the trainer state is damaged ({one_line(err)}); resume from another "
                              "checkpoint or train again") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder}: {TRAINER_META} is not a vislang trainer state")
    return tensors, meta


def _legacy_trainer_state(path: Path) -> TrainerState:
    """An older checkpoint's trainer_state.pt, read with weights_only=True (tensors and plain data, no code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        optimizer = state["optimizer"]
        tensors = {f"optimizer.{param}.{name}": value for param, entries in optimizer["state"].items()
                   for name, value in entries.items() if torch.is_tensor(value)}
        plain = {str(param): {name: value for name, value in entries.items() if not torch.is_tensor(value)}
                 for param, entries in optimizer["state"].items()}
        meta = {"step": int(state["step"]), "elapsed": float(state["elapsed"]),
                "optimizer": {"param_groups": optimizer["param_groups"], "state": plain}}
    except Exception as err:  # torch raises many kinds for a damaged or unsafe file; all mean "cannot resume from it"
        raise CheckpointError(f"{path} is damaged or not a trainer state ({one_line(err)})") from err
    return tensors, meta


def _saved_folders(folder: Path) -> list[Path]:
    """The whole checkpoint folders of a run, oldest first (temporaries have other names)."""
    return sorted(p for p in folder.glob("step-*") if STEP_FOLDER.fullmatch(p.name) and (p / "model.safetensors").is_file())


def _prune(folder: Path, keep: int) -> None:
    for old in _saved_folders(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    remove_stale_temporaries(folder)  # what saves of a killed run left behind


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or a run folder's latest checkpoint (the newest whole one when
    `latest` names a folder that is gone)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    folder = path / "checkpoints"
    pointer = folder / LATEST
    named = None
    if pointer.is_file():
        named = folder / pointer.read_text(encoding="utf-8", errors="replace").strip()
        if STEP_FOLDER.fullmatch(named.name) and (named / "model.safetensors").is_file():
            return named
    saved = _saved_folders(folder) if folder.is_dir() else []
    if saved:
        if named is not None:
            warnings.warn(f"{pointer} names {named.name}, which is not a whole checkpoint; using {saved[-1].name}")
        return saved[-1]
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
