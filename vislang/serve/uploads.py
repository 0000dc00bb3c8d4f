"""An uploaded photo -> an upright RGB PIL image, or a refusal.

The format is sniffed from the bytes (Pillow's own identification, restricted to the photo
formats a browser sends), never taken from the file name or the declared content type, so a
text file named .jpg is refused. The pixel count is read from the header and checked before
anything is decoded: a small file declaring 30000 x 30000 pixels is refused without allocating them.
"""
from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from ..data.images import to_rgb
from .limits import ApiError, Limits

PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


def decode_upload(data: bytes, limits: Limits, min_side: int) -> Image.Image:
    """The uploaded bytes as an upright RGB image; a JPEG is decoded at the smallest scale that
    keeps both sides at least `min_side` (the model's input size)."""
    if not data:
        raise ApiError(422, "the uploaded file is empty")
    if len(data) > limits.max_upload_bytes:
        raise ApiError(413, upload_too_large(limits))
    try:
        image = Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
    except Image.DecompressionBombError:  # Pillow's own cap, above ours, refused it while opening
        raise ApiError(422, f"image too large: more than {limits.max_pixels / 1e6:g} megapixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ApiError(415, f"not an image: the upload must be a {', '.join(PHOTO_FORMATS)} photo") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ApiError(422, f"image too large: {width}x{height} pixels, at most {limits.max_pixels / 1e6:g} megapixels")
    try:
        if image.format == "JPEG":
            image.draft(image.mode, (min_side, min_side))
        image.load()  # decode now: a truncated file fails here
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ApiError(415, f"unreadable {image.format} image: the file is damaged or truncated") from None


def upload_too_large(limits: Limits) -> str:
    return f"upload too large: at most {limits.max_upload_bytes / 2**20:g} MB"
