"""Result grids a person can look at: one row per query, its top hits as thumbnails with labels."""
from __future__ import annotations

import html
import textwrap
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .atomic import write_atomic, write_text_atomic
from .data.images import ImageLoadError, load_image

Hit = tuple[Path, str, bool]  # image, label under it, whether it is a correct answer


def _thumbnail(path: Path, size: int) -> Image.Image:
    try:
        image = load_image(path, min_side=size)
    except ImageLoadError:
        return Image.new("RGB", (size, size), (200, 200, 200))
    image.thumbnail((size, size))
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def result_grid(rows: Sequence[tuple[str, Sequence[Hit]]], out: Path, thumb: int = 140, label_lines: int = 3) -> Path:
    """Write a PNG: each row starts with the query text, then the hits, green-framed when correct;
    each hit's label is wrapped to the thumbnail's width and shown up to `label_lines` lines."""
    font = ImageFont.load_default()
    label_h, query_w, pad = 13 * label_lines + 1, 220, 6
    label_chars = 24 * thumb // 140  # the default font's characters across a thumbnail
    cols = max((len(hits) for _, hits in rows), default=0)
    width = query_w + cols * (thumb + pad) + pad
    height = len(rows) * (thumb + label_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (query, hits) in enumerate(rows):
        y = pad + r * (thumb + label_h + pad)
        draw.multiline_text((pad, y + 4), "\n".join(textwrap.wrap(query, 32)[:8]), fill=(0, 0, 0), font=font)
        for c, (path, label, correct) in enumerate(hits):
            x = query_w + c * (thumb + pad)
            canvas.paste(_thumbnail(path, thumb), (x, y))
            if correct:
                draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], outline=(0, 170, 0), width=4)
            draw.multiline_text((x, y + thumb + 2), "\n".join(textwrap.wrap(label, label_chars)[:label_lines]), fill=(60, 60, 60), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_format = Image.registered_extensions().get(out.suffix.lower(), "PNG")  # the temporary name has no suffix
    write_atomic(out, lambda tmp: canvas.save(tmp, format=image_format), "figure")
    return out


def result_page(title: str, metrics: dict[str, float], rows: Sequence[tuple[str, Sequence[Hit]]], grid: Path, out: Path) -> Path:
    """A small HTML page with the metrics table and the same results as the grid."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1><table border='1' cellpadding='4'>"]
    parts += [f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in metrics.items()]
    parts.append(f"</table><p><img src='{html.escape(grid.name)}'></p>")
    for query, hits in rows:
        parts.append(f"<h3>{html.escape(query)}</h3><div>")
        for path, label, correct in hits:
            border = "4px solid green" if correct else "1px solid #ccc"
            parts.append(f"<figure style='display:inline-block;width:150px'><img src='{path.resolve().as_uri()}' "
                         f"style='width:140px;border:{border}'><figcaption>{html.escape(label)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    write_text_atomic(out, "\n".join(parts), "figure")
    return out
