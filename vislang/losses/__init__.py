"""Training objectives."""
from .contrastive import contrastive_loss, linked_image_loss
from .matching import matching_loss

__all__ = ["contrastive_loss", "linked_image_loss", "matching_loss"]
