"""Catalog images and their thumbnails, looked up by item id in the index's records.

A client names an item, never a file: the path comes from the record, so an id such as
`../../etc/passwd` is only an id that no item has.
"""
from __future__ import annotations

import functools
import io
import mimetypes
from pathlib import Path

from ..data.images import ImageLoadError, load_image
from ..data.tar_members import read_member, split_member
from ..search import Index
from ..search.hits import Record
from .limits import ApiError

THUMB_SIDE = 320  # px, the longer side: sharp in a grid cell of a phone or laptop screen at 2x
THUMB_CACHE = 4096  # thumbnails kept in memory (about 15 kB each)


class CatalogImages:
    def __init__(self, index: Index) -> None:
        self.index = index
        self.thumbnail = functools.lru_cache(maxsize=THUMB_CACHE)(self._thumbnail)

    def record(self, item_id: str, kind: str | None = None) -> Record:
        """The record of an indexed item (of `kind`, else of whichever kind has the id), or a 404."""
        record = self.index.record(kind, item_id) if kind else self.index.find(item_id)
        if record is None:
            raise ApiError(404, f"unknown id {item_id!r}" + (f" among the {kind}s" if kind else "")
                           + ": no item in the index has it")
        return record

    def original(self, item_id: str, kind: str | None = None) -> tuple[bytes, str]:
        """The catalog file's own bytes and media type."""
        path = Path(self.record(item_id, kind)["image"])
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        member = split_member(path)
        try:
            return (read_member(*member) if member else path.read_bytes()), media_type
        except OSError:
            raise ApiError(404, f"the image of {item_id!r} is missing on the server") from None

    def _thumbnail(self, item_id: str, kind: str | None = None) -> bytes:
        """A JPEG no larger than THUMB_SIDE on its longer side."""
        record = self.record(item_id, kind)
        try:
            image = load_image(record["image"], min_side=THUMB_SIDE)
        except ImageLoadError:
            raise ApiError(404, f"the image of {item_id!r} is missing or unreadable on the server") from None
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85, optimize=True)
        return out.getvalue()
