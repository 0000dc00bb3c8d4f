"""The non-finite guard: a step whose loss or gradients are not finite is skipped, not taken.

One bad batch (an overflow, a degenerate crop) should not end a long run, and clipping would turn
a NaN gradient into NaN weights that every later checkpoint carries. So such a step leaves the
weights, the buffers its forward pass updated (BatchNorm's running statistics, which a NaN batch
would poison for every later evaluation) and the optimizer as they were, and is counted (`RunState.nonfinite_skipped`, logged in
metrics.jsonl); `train.max_nonfinite_steps` of them in a row mean the run has diverged, and it
stops with TrainingDiverged, its last checkpoint (saved before the streak, or during it with the
same good weights) untouched.
"""
from __future__ import annotations

import math
import warnings

import torch

from ..models import VisLangModel
from .distributed import Ranks
from .state import RunState
from .step import TrainingDiverged, optimizer_step


class NonFiniteGuard:
    def __init__(self, limit: int, state: RunState) -> None:
        self.limit, self.state = limit, state
        self.last_reason = ""
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_forward(self, model: VisLangModel) -> None:
        """Remember the buffers the coming forward pass may update (a few KB)."""
        self._buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def step(self, model: VisLangModel, optimizer: torch.optim.Optimizer, loss: float, grad_clip: float,
             ranks: Ranks) -> torch.Tensor | None:
        """`optimizer_step` when `loss` (the same on every rank) and the gradients are finite: returns
        the gradient norm. Otherwise clears the gradients, counts the skip and returns None; raises
        TrainingDiverged when it is the `limit`-th skip in a row."""
        if math.isfinite(loss):
            try:
                grad_norm = optimizer_step(model, optimizer, grad_clip, ranks)
                self.state.nonfinite_streak = 0
                return grad_norm
            except TrainingDiverged as err:  # the gradients (averaged over ranks) were not finite
                reason = str(err).removeprefix("training diverged: ")
        else:
            optimizer.zero_grad(set_to_none=True)
            reason = f"loss not finite ({loss})"
        with torch.no_grad():
            for buffer, before in self._buffers:
                buffer.copy_(before)
        self.state.nonfinite_skipped += 1
        self.state.nonfinite_streak += 1
        self.last_reason = reason
        if self.state.nonfinite_streak >= self.limit:
            raise TrainingDiverged(f"training diverged: {self.limit} steps in a row skipped, the last for {reason}")
        if ranks.main:
            warnings.warn(f"step {self.state.step + 1} skipped: {reason} ({self.state.nonfinite_skipped} skipped so "
                          f"far; {self.limit} in a row stop the run)")
        return None
