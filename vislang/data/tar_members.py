"""Images stored inside tar shards, addressed as if the shard were a folder: `shard-000000.tar/KEY.jpg`.

Reading a member seeks straight to its bytes through an index of the shard built once per
process, so training and evaluation can open shard images at random like files.
"""
from __future__ import annotations

import functools
import tarfile
from pathlib import Path


def split_member(path: Path) -> tuple[Path, str] | None:
    """(shard file, member name) when `path` points inside a .tar shard, else None."""
    parent = path.parent
    if parent.suffix == ".tar" and parent.is_file():
        return parent, path.name
    return None


@functools.lru_cache(maxsize=256)
def _index(shard: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """Member name -> (byte offset, size); keyed by mtime so a rewritten shard is indexed again."""
    with tarfile.open(shard) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}


def read_member(shard: Path, name: str) -> bytes:
    offset, size = _index(str(shard), shard.stat().st_mtime_ns).get(name, (None, None))
    if offset is None:
        raise FileNotFoundError(f"no {name} in {shard}")
    with open(shard, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def signature(path: Path) -> str:
    """Path, size and mtime of a file (for a member: of its shard), to key caches of decoded images."""
    member = split_member(path)
    source = member[0] if member else path
    stat = source.stat()
    return f"{path.resolve() if not member else source.resolve() / member[1]}|{stat.st_size}|{stat.st_mtime_ns}"
