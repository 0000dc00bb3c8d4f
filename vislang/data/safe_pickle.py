"""Load pickles that may only hold plain data.

The IKEA source dataset ships its metadata as Python pickles. ``pickle.load``
will import and call whatever a pickle names, so a tampered file could run code.
``safe_load`` uses an unpickler that resolves only a fixed allow-list of
container and scalar types and refuses every other global before it is
imported.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import IO, Any

__all__ = ["UnsafePickleError", "safe_load", "ALLOWED_GLOBALS"]

_BUILTIN_NAMES = frozenset(
    {
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "str",
        "bytes",
        "bytearray",
        "int",
        "float",
        "complex",
        "bool",
    }
)

# "__builtin__" is how Python 2 pickles (the original dataset is from 2017) name builtins.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {(module, name) for module in ("builtins", "__builtin__") for name in _BUILTIN_NAMES}
    | {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
    }
)


class UnsafePickleError(ValueError):
    """A pickle asked for a global outside the allow-list."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocols 0-2 use to store ``bytes``.

    Only the exact call that pickle itself writes is honoured, so the codec
    machinery cannot be reached with other arguments.
    """
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(
            f"refusing _codecs.encode({type(text).__name__}, {encoding!r}) in pickle"
        )
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}' from pickle: "
                "only plain containers, strings and numbers are allowed"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r} in pickle")


def safe_load(
    fileobj_or_path: str | os.PathLike[str] | IO[bytes] | bytes,
    *,
    encoding: str = "utf-8",
    errors: str = "replace",
) -> object:
    """Unpickle plain data (dicts, lists, strings, numbers, ...) only.

    ``fileobj_or_path`` is a path, an open binary file, or the pickle bytes.
    ``encoding``/``errors`` decode Python 2 ``str`` objects; the default keeps
    UTF-8 text and never fails on stray bytes.

    Raises ``UnsafePickleError`` (a ``ValueError``) when the pickle names any
    other global, and ``pickle.UnpicklingError`` when it is malformed.
    """
    if isinstance(fileobj_or_path, (bytes, bytearray)):
        return _load(io.BytesIO(fileobj_or_path), encoding, errors)
    if isinstance(fileobj_or_path, (str, os.PathLike)):
        with Path(fileobj_or_path).open("rb") as f:
            return _load(f, encoding, errors)
    return _load(fileobj_or_path, encoding, errors)


def _load(f: IO[bytes], encoding: str, errors: str) -> object:
    return _RestrictedUnpickler(f, encoding=encoding, errors=errors).load()
