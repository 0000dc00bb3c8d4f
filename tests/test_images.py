import io

import numpy as np
import pytest
import torch
from PIL import Image

from vislang.data.images import ImageLoadError, load_image
from vislang.data.pixels import augment, build_image_bank, to_pixels


def test_every_mode_becomes_rgb(tmp_path):
    paths = []
    for mode, colour in (("L", 128), ("RGBA", (255, 0, 0, 0)), ("CMYK", (0, 255, 255, 0)), ("P", 3), ("1", 1)):
        path = tmp_path / f"{mode}.{'jpg' if mode in ('L', 'CMYK') else 'png'}"
        Image.new(mode, (10, 8), colour).save(path)
        paths.append(path)
    for path in paths:
        image = load_image(path)
        assert image.mode == "RGB" and image.size == (10, 8)
    # A fully transparent RGBA pixel is composited on white, not black.
    assert load_image(paths[1]).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (10, 30)


def test_truncated_and_missing_files_raise_a_named_error(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="image not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageLoadError, match="text.jpg"):
        load_image(tmp_path / "text.jpg")


def test_bank_skips_unreadable_files_with_one_counted_warning(tmp_path):
    good = []
    for i in range(3):
        good.append(tmp_path / f"{i}.jpg")
        Image.new("RGB", (40, 30), (i * 80, 0, 0)).save(good[-1])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        bank, ok = build_image_bank([good[0], bad, good[1], good[2]], 16, cache_dir=tmp_path / "c", workers=1)
    assert ok == [0, 2, 3] and bank.shape == (3, 3, 16, 16) and bank.dtype == torch.uint8
    again, ok_again = build_image_bank([good[0], bad, good[1], good[2]], 16, cache_dir=tmp_path / "c", workers=1)
    assert ok_again == ok and torch.equal(again, bank)  # served from the cache


def test_augment_is_seeded_and_shaped():
    bank = torch.randint(0, 255, (4, 3, 20, 20), dtype=torch.uint8)
    a = augment(bank, [0, 2], 16, (0.5, 1.0), True, torch.Generator().manual_seed(1))
    b = augment(bank, [0, 2], 16, (0.5, 1.0), True, torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)


def test_to_pixels_accepts_paths_and_pil(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGBA", (50, 20), (0, 255, 0, 255)).save(path)
    pixels = to_pixels([path, Image.new("L", (20, 50), 10)], 24)
    assert pixels.shape == (2, 3, 24, 24) and pixels.dtype == torch.float32
