"""Pixels for the image tower: square crops, an in-memory bank of decoded images, augmentation.

Decoding JPEGs dominates a CPU epoch, so training decodes each image once into a uint8 bank
(cached on disk between runs) and augments crops of it in memory.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from tqdm import tqdm

from .images import ImageLike, ImageLoadError, SkipCounter, load_image
from .tar_members import signature

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def square(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop: uint8 [size, size, 3]."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.BICUBIC, reducing_gap=2.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _decode(args: tuple[ImageLike, int]) -> np.ndarray | str:
    item, size = args
    try:
        return square(load_image(item, min_side=size), size)
    except ImageLoadError as err:
        return str(err)


def normalize(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float, normalised with the ImageNet mean and std."""
    return (batch_uint8.float().div_(255.0) - MEAN) / STD


def to_pixels(items: Sequence[ImageLike], size: int) -> torch.Tensor:
    """Decode images for inference: float [N, 3, size, size]; an unreadable item raises ImageLoadError."""
    arrays = [square(load_image(item, min_side=size), size) for item in items]
    return normalize(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


def _cache_key(paths: Sequence[Path], size: int) -> str:
    digest = hashlib.sha1(str(size).encode())
    for path in paths:
        digest.update(signature(path).encode())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("VISLANG_CACHE", Path.home() / ".cache" / "vislang"))


def build_image_bank(
    paths: Sequence[Path], size: int, cache_dir: Path | None = None, workers: int = 2
) -> tuple[torch.Tensor, list[int]]:
    """Decode every path once into uint8 [N_ok, 3, size, size]; returns it and the indices that decoded.

    Unreadable files are skipped with one counted warning. The bank is cached under `cache_dir`
    keyed by the files' paths, sizes and mtimes.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = _cache_key(paths, size)
    bank_file, index_file = cache_dir / f"bank-{key}.npy", cache_dir / f"bank-{key}.idx.npy"
    if bank_file.exists() and index_file.exists():
        return torch.from_numpy(np.load(bank_file)), np.load(index_file).tolist()
    jobs = [(path, size) for path in paths]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(_decode, jobs, chunksize=16), total=len(jobs), desc="decoding images", unit="img"))
    skipped = SkipCounter()
    arrays, ok = [], []
    for index, result in enumerate(results):
        if isinstance(result, str):
            skipped.add(ImageLoadError(result))
        else:
            arrays.append(result)
            ok.append(index)
    skipped.warn()
    if not arrays:
        raise ImageLoadError("none of the training images could be read")
    bank = np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))
    cache_dir.mkdir(parents=True, exist_ok=True)
    for target, array in ((bank_file, bank), (index_file, np.asarray(ok, dtype=np.int64))):
        tmp = target.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, array)
        os.replace(tmp, target)
    return torch.from_numpy(bank), ok


def augment(
    bank: torch.Tensor,
    indices: Sequence[int],
    out_size: int,
    scale: tuple[float, float],
    flip: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Random-resized crops (square, area fraction in `scale`) and horizontal flips; normalised float."""
    size = bank.shape[-1]
    crops = []
    for index in indices:
        area = float(torch.empty(1).uniform_(*scale, generator=generator))
        side = max(8, min(size, round(size * area**0.5)))
        top, left = (int(torch.randint(0, size - side + 1, (1,), generator=generator)) for _ in range(2))
        crop = TF.resized_crop(bank[index], top, left, side, side, [out_size, out_size], antialias=True)
        if flip and bool(torch.rand(1, generator=generator) < 0.5):
            crop = crop.flip(-1)
        crops.append(crop)
    return normalize(torch.stack(crops))
