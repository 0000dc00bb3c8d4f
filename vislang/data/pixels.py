"""Pixels for the image tower: square crops, a bank of decoded images, augmentation.

Decoding JPEGs dominates a CPU epoch, so training decodes each image once into a uint8 bank
(cached on disk between runs, split by shard across torchrun ranks) and augments crops of it.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from tqdm import tqdm

from ..atomic import write_atomic
from ..config import ConfigError
from .images import ImageLike, ImageLoadError, SkipCounter, load_image
from .locate import default_cache_dir
from .tar_members import signature

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
GROUP_SIZE = 256  # plain files per decode group (a shard is one group whatever its size)
CHUNK = 32  # images per task of a rank's decode workers; a task never spans two groups


def square(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop: uint8 [size, size, 3]."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.BICUBIC, reducing_gap=2.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _decode(item: ImageLike, size: int) -> np.ndarray | str:
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


def decode_groups(paths: Sequence[Path]) -> list[list[int]]:
    """Indices of `paths` in the units that ranks share out.

    One group per shard, so that a shard's tar is indexed and read by one rank only; plain files
    in contiguous runs of GROUP_SIZE, as they have nothing to keep together and only the ranks'
    work to even out.
    """
    groups: list[list[int]] = []
    shards: dict[Path, list[int]] = {}
    plain: list[int] = []
    for index, path in enumerate(paths):
        shard = Path(path).parent
        if shard.suffix == ".tar":
            if shard not in shards:
                shards[shard] = []
                groups.append(shards[shard])
            shards[shard].append(index)
        else:
            if not plain or len(plain) == GROUP_SIZE:
                plain = []
                groups.append(plain)
            plain.append(index)
    return groups


def _decode_chunk(args: tuple[list[Path], int]) -> list[np.ndarray | str]:
    paths, size = args
    return [_decode(path, size) for path in paths]


def _decode_part(paths: Sequence[Path], size: int, groups: list[list[int]], piece: Path, workers: int,
                 progress: bool) -> None:
    """Decode one rank's groups into its piece file: the pixels that decoded, their indices, and
    the errors of the others (rank 0 counts them for every rank)."""
    chunks = [group[start : start + CHUNK] for group in groups for start in range(0, len(group), CHUNK)]
    pixels = np.empty((sum(map(len, chunks)), 3, size, size), np.uint8)
    ok, failed, errors = [], [], []
    jobs = [([paths[i] for i in chunk], size) for chunk in chunks]
    with ProcessPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(pixels), desc="decoding images", unit="img", disable=not progress) as bar:
        for chunk, results in zip(chunks, pool.map(_decode_chunk, jobs)):
            for index, result in zip(chunk, results):
                if isinstance(result, str):
                    failed.append(index)
                    errors.append(result)
                else:
                    pixels[len(ok)] = result.transpose(2, 0, 1)
                    ok.append(index)
            bar.update(len(chunk))

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # np.savez given a name would add ".npz" to it
            np.savez(handle, indices=np.asarray(ok, np.int64), pixels=pixels[: len(ok)],
                     failed=np.asarray(failed, np.int64), errors=np.asarray(errors, dtype=str))

    write_atomic(piece, save, "bank")


def _assemble(pieces: list[Path], size: int, bank_file: Path, index_file: Path) -> None:
    """The pieces, back in the paths' order, as the bank and index files, filled through a memory
    map so that rank 0 holds one piece at a time, not the bank; warns once for every rank's skips."""
    decoded, failed, errors = [], [], []
    for piece in pieces:
        with np.load(piece) as part:
            decoded.append(part["indices"])
            failed.extend(part["failed"].tolist())
            errors.extend(part["errors"].tolist())
    skipped = SkipCounter()
    for _, error in sorted(zip(failed, errors)):
        skipped.add(ImageLoadError(error))
    skipped.warn()
    order = np.sort(np.concatenate(decoded))
    if not len(order):
        return

    def fill(tmp: Path) -> None:
        bank = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(order), 3, size, size))
        for piece, indices in zip(pieces, decoded):
            with np.load(piece) as part:
                bank[np.searchsorted(order, indices)] = part["pixels"]
        bank.flush()

    write_atomic(bank_file, fill, "bank")
    # the index last: the bank counts as cached only when both are there
    write_atomic(index_file, lambda tmp: _save_npy(tmp, order), "bank")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save given a name would add ".npy" to it
        np.save(handle, array)


def build_image_bank(
    paths: Sequence[Path],
    size: int,
    cache_dir: Path | None = None,
    workers: int = 2,
    *,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> tuple[torch.Tensor, list[int]]:
    """Decode every path once into uint8 [N_ok, 3, size, size]; returns it and the indices that decoded.

    Unreadable files are skipped with one counted warning. The bank is cached under `cache_dir`
    keyed by the files' paths, sizes and mtimes. Under torchrun (`rank` of `world`, `barrier`
    from the process group) the ranks share the decoding: each decodes only the groups `g` of
    `decode_groups` with `g % world == rank` into a piece file, and rank 0 joins the pieces into
    the bank one process would have written, byte for byte. Every rank gets the whole bank (the
    sampler draws the global batch from all of it) as a copy-on-write memory map of the cache
    file: the ranks of a machine share its pages, and RAM no longer bounds its size.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = _cache_key(paths, size)
    bank_file, index_file = cache_dir / f"bank-{key}.npy", cache_dir / f"bank-{key}.idx.npy"
    pieces = [cache_dir / f"bank-{key}.piece{r}of{world}.npz" for r in range(world)]

    def cached() -> bool:
        return bank_file.exists() and index_file.exists()

    # Every rank passes both barriers even when the bank is cached, so that ranks which see the
    # cache and ranks which do not (another run writing it meanwhile) still meet.
    if not cached():
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file by that name, no permission
            raise ConfigError(f"cannot use {cache_dir} as the image cache folder ({err.strerror}): point "
                              "data.cache_dir (or VISLANG_CACHE) at a folder that can be written") from err
        _decode_part(paths, size, decode_groups(paths)[rank::world], pieces[rank], workers, progress=rank == 0)
    barrier()
    if rank == 0:
        try:
            if not cached():
                _assemble(pieces, size, bank_file, index_file)
        except FileNotFoundError as err:
            # a run building the same bank at the same time may have written it, then removed its
            # pieces, which are ours too (same names, same bytes)
            if not cached():
                raise FileNotFoundError(f"{err.filename}: a rank's piece of the image bank is missing; every "
                                        "rank must see the same cache folder (across machines: a shared one)") from err
        finally:
            for piece in pieces:
                piece.unlink(missing_ok=True)
    barrier()
    if not cached():
        raise ImageLoadError("none of the training images could be read")
    return torch.from_numpy(np.load(bank_file, mmap_mode="c")), np.load(index_file).tolist()


def resized(bank: torch.Tensor, rows: slice, out_size: int) -> torch.Tensor:
    """Banked images resized whole to `out_size`, as inference sees them; normalised float."""
    return normalize(TF.resize(bank[rows], [out_size, out_size], antialias=True))


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


def view_batches(bank: torch.Tensor, image_size: int, views: int, augment_cfg: dict, seed: int,
                 batch: int = 256, desc: str = "embedding training images", first: int = 0
                 ) -> Iterator[tuple[int, torch.Tensor]]:
    """(view, pixels of the next `batch` bank images) over views `first`.. of every bank image: view 0
    whole (as inference sees it), the others random training crops, each view seeded on its own."""
    for view in tqdm(range(first, views), desc=desc, unit="view"):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (view + 1))
        for start in range(0, len(bank), batch):
            rows = range(start, min(start + batch, len(bank)))
            if view == 0:
                yield view, resized(bank, slice(rows.start, rows.stop), image_size)
            else:
                yield view, augment(bank, list(rows), image_size, augment_cfg["scale"], augment_cfg["flip"], generator)
