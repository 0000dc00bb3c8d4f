"""Learning rate: linear warmup, then cosine decay to a floor, as a function of run progress."""
from __future__ import annotations

import math


def lr_at(step: int, progress: float, base_lr: float, warmup_steps: int, min_ratio: float) -> float:
    """`progress` in [0, 1] is how far the run is (by steps or by wall clock, whichever is further)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return base_lr * (min_ratio + (1.0 - min_ratio) * cosine)
