"""Atomic files and folders: every file vislang writes appears whole or not at all.

A writer fills a temporary name beside the target (`.NAME.tmp-PID`), flushes it to disk and
renames it over the target in one `os.replace`: a reader sees the old version or the new one,
and a process killed at any moment (SIGKILL, power cut after the fsync) leaves the old version
loadable. Temporaries a killed process left behind are removed by the next write of the same
target (when the process that made them is gone).

`fault_hook` is the fault-injection point of every save: each writer calls `fault_point(kind,
path)` between writing its data and the rename that publishes it (and, in a save of several
files, between them). Tests set the hook to raise or to SIGKILL the process there and check that
the previous version still loads (tests/test_atomic.py). It is None, doing nothing, otherwise.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

# kind of save ("checkpoint", "index", "manifest", "metadata", "shards", "bank", "download",
# "weights", "figure"), the path being written -> None; may raise or kill the process
fault_hook: Callable[[str, Path], None] | None = None


def fault_point(kind: str, path: Path) -> None:
    """Where a save can be interrupted: the test hook runs here (see the module docstring)."""
    if fault_hook is not None:
        fault_hook(kind, Path(path))


def temporary_name(path: Path) -> Path:
    """The name a file or folder is written under before it is renamed to `path`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temporaries(folder: Path, name: str = "*") -> None:
    """Delete the temporaries of `folder / name` (by default of anything in `folder`) left by
    processes that no longer run: killed mid-write."""
    for stale in Path(folder).glob(f".{name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            _remove(stale)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where folders cannot be opened)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], kind: str = "metadata") -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one rename."""
    path = Path(path)
    remove_stale_temporaries(path.parent, path.name)
    tmp = temporary_name(path)
    try:
        write(tmp)
        fault_point(kind, path)
        _fsync_file(tmp)  # on disk before the rename makes it visible
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, kind: str = "metadata") -> Path:
    """`path` holds `text` (UTF-8), written atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), kind)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yields an empty temporary folder to fill; on leaving the block without an error it becomes
    `path` (replacing an earlier `path`: that one is renamed aside first, then deleted, so the
    name always holds a whole folder or, for an instant, none). An error removes the temporary."""
    path = Path(path)
    remove_stale_temporaries(path.parent, path.name)
    tmp = temporary_name(path)
    _remove(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fault_point(kind, path)
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        old = path.with_name(f".{path.name}.tmp-old-{os.getpid()}")  # a temporary name too: cleaned if we die here
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
        _fsync_dir(path.parent)
    finally:
        _remove(tmp)
