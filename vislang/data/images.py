"""Image loading that survives real catalog files.

EXIF orientation is applied, every mode (greyscale, 16-bit, RGBA, CMYK, palette; an animation's
first frame) becomes 8-bit RGB, and files that are missing, not regular files (a folder, a pipe,
a symlink loop), truncated, not images, or declaring more pixels than Pillow's decompression-bomb
limit raise ImageLoadError so callers can skip and count them.
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .tar_members import read_member, split_member

ImageLike = str | os.PathLike | Image.Image


class ImageLoadError(ValueError):
    """A file could not be read as an image."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB version of an opened image; transparent areas become white (catalog shots are on white)."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit samples: keep the top 8 bits (convert() clips)
        values = np.asarray(image).astype(np.int64)
        return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
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
        if member is None:
            _check_regular_file(path)
        with Image.open(io.BytesIO(read_member(*member)) if member else path) as image:
            if min_side and image.format == "JPEG":
                image.draft(image.mode, (min_side, min_side))
            image.load()  # decode now so a truncated file fails here, not later
            return to_rgb(image)
    except ImageLoadError:
        raise
    except FileNotFoundError as err:
        raise ImageLoadError(f"image not found: {path}") from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"image too large: {path} ({err})") from err
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many kinds on a damaged or crafted file
        raise ImageLoadError(f"not a readable image: {path} ({type(err).__name__}: {str(err)[:200]})") from err


def _check_regular_file(path: Path) -> None:
    """Refuse what is not a regular file before opening it: a folder cannot be read, a named pipe
    would block the read forever, a symlink loop names nothing."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:  # ELOOP, a name too long, a NUL byte
        raise ImageLoadError(f"cannot open: {path} ({getattr(err, 'strerror', None) or err})") from err
    if not stat.S_ISREG(mode):
        raise ImageLoadError(f"not a regular file: {path}")


class SkipCounter:
    """Counts images that could not be loaded and warns once per batch of work, not per file."""

    def __init__(self, skipped: list[str] | None = None) -> None:
        self.skipped: list[str] = list(skipped or [])

    def add(self, error: Exception) -> None:
        self.skipped.append(str(error))

    def warn(self, what: str = "images") -> None:
        """One warning: how many were skipped, how many for each reason (an ImageLoadError's message
        reads "REASON: path ..."), and the first in full."""
        if self.skipped:
            reasons = Counter(message.split(": ")[0] for message in self.skipped)
            why = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
            warnings.warn(f"skipped {len(self.skipped)} unreadable {what} ({why}); first: {self.skipped[0]}",
                          stacklevel=2)
