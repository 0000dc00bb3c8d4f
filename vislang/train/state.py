"""A run's state in one object: what the loop counts, and what a checkpoint must carry for a
resumed run to continue exactly as an uninterrupted one would have.

`RunState` holds the step, the clock and the non-finite counts. `checkpoint_state` adds the
optimizer's state and the state of every random generator (Python's, NumPy's, torch's CPU and
CUDA generators); `restore` puts them back. The data order needs nothing more: the sampler's
order is a function of seed and epoch, and each step's augmentation generator is seeded by seed
and step, so a resumed run replays the same batches and crops.

On disk (in the checkpoint folder, no pickle): `trainer_state.safetensors` (the optimizer's
tensors and the torch generators' states) and `trainer_state.json` (everything else).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, TrainerState, load_trainer_state

OPTIMIZER, RNG = "optimizer.", "rng."


@dataclass
class RunState:
    step: int = 0  # optimiser steps taken (skipped ones included: their batches were used)
    elapsed: float = 0.0  # seconds of training before this process started; the clock resumes from it
    nonfinite_skipped: int = 0  # steps skipped for a non-finite loss or gradients, over the run
    nonfinite_streak: int = 0  # of those, how many in a row up to the last step
    last_saved: int = 0  # the step of the last checkpoint (0: none yet)

    def checkpoint_state(self, optimizer: torch.optim.Optimizer, elapsed: float) -> TrainerState:
        """(tensors, JSON) of this state at `elapsed` seconds, with the optimizer and every RNG."""
        meta: dict[str, Any] = {**asdict(self), "elapsed": elapsed}
        tensors, meta["optimizer"] = _optimizer_parts(optimizer)
        rng, meta["rng"] = _rng_parts()
        return {**tensors, **rng}, meta

    @classmethod
    def restore(cls, folder: Path, optimizer: torch.optim.Optimizer) -> "RunState":
        """The state saved in checkpoint `folder`; loads the optimizer and sets every RNG as it was."""
        tensors, meta = load_trainer_state(folder)
        try:
            _load_optimizer(optimizer, tensors, meta["optimizer"])
            _set_rng(tensors, meta.get("rng"))
            known = {f.name for f in fields(cls)}
            return cls(**{key: value for key, value in meta.items() if key in known})
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{folder}: the trainer state does not fit this run ({type(err).__name__}: {err}); "
                                  "resume with the run's own settings or train into a new --output") from err


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER}{param}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(param), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "state": plain}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    per_param: dict[int, dict[str, Any]] = {int(param): dict(entries) for param, entries in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER):
            param, name = key[len(OPTIMIZER):].split(".", 1)
            per_param.setdefault(int(param), {})[name] = value
    fresh = optimizer.state_dict()["param_groups"]
    if len(fresh) != len(meta["param_groups"]):
        raise ValueError(f"{len(meta['param_groups'])} parameter groups saved, {len(fresh)} now")
    # JSON turned tuples (AdamW's betas) into lists: give each setting its type in a fresh optimizer
    groups = [{key: tuple(value) if isinstance(now.get(key), tuple) else value for key, value in saved.items()}
              for saved, now in zip(meta["param_groups"], fresh)]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    # safetensors stores tensors contiguous; a channels_last parameter's moments must have its
    # strides again, or the fused AdamW kernel, which walks memory in order, pairs the wrong elements
    for param, entries in optimizer.state.items():
        for name, value in entries.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                entries[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _rng_parts() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"{RNG}torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"{RNG}cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return tensors, {"python": [version, list(internal), gauss],
                     "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)]}


def _set_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None) -> None:
    if f"{RNG}torch" in tensors:
        torch.set_rng_state(tensors[f"{RNG}torch"])
    cuda = sorted((key for key in tensors if key.startswith(f"{RNG}cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[key] for key in cuda])
    if meta:  # absent in checkpoints written before the RNG states were saved
        version, internal, gauss = meta["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, position, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
