"""Image loading that survives real catalog files.

EXIF orientation is applied, every mode (greyscale, RGBA, CMYK, palette) becomes RGB, and files
that are missing, truncated or not images raise ImageLoadError so callers can skip and count them.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .tar_members import read_member, split_member

ImageLike = str | os.PathLike | Image.Image


class ImageLoadError(ValueError):
    """A file could not be read as an image."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB version of an opened image; transparent areas become white (catalog shots are on white)."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def load_image(item: ImageLike, min_side: int | None = None) -> Image.Image:
    """Open a path (or take a PIL image) and return it upright in RGB, fully decoded.

    With `min_side`, a JPEG may be decoded at a reduced scale that still keeps both sides at
    least that long (much faster for large photos that are about to be shrunk anyway).
    """
    if isinstance(item, Image.Image):
        return to_rgb(item)
    path = Path(item)
    try:
        member = split_member(path)
        with Image.open(io.BytesIO(read_member(*member)) if member else path) as image:
            if min_side and image.format == "JPEG":
                image.draft(image.mode, (min_side, min_side))
            image.load()  # decode now so a truncated file fails here, not later
            return to_rgb(image)
    except FileNotFoundError as err:
        raise ImageLoadError(f"image not found: {path}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"not a readable image: {path} ({err})") from err


class SkipCounter:
    """Counts images that could not be loaded and warns once per batch of work, not per file."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def add(self, error: Exception) -> None:
        self.skipped.append(str(error))

    def warn(self, what: str = "images") -> None:
        if self.skipped:
            warnings.warn(
                f"skipped {len(self.skipped)} unreadable {what}; first: {self.skipped[0]}",
                stacklevel=2,
            )
