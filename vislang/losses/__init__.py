"""Training objectives."""
from .contrastive import contrastive_loss

__all__ = ["contrastive_loss"]
