"""Training: the loop, its schedule, checkpoints and run logging."""
from .loop import train

__all__ = ["train"]
