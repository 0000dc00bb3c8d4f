"""Find the catalog folder: an explicit argument, then $VISLANG_DATA, then ../shared/data/ikea,
then the copy a first run downloaded into the cache folder."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "VISLANG_DATA"
DEFAULT_RELATIVE = Path("..") / "shared" / "data" / "ikea"


def default_cache_dir() -> Path:
    """vislang's cache folder: $VISLANG_CACHE, else ~/.cache/vislang (decoded images, converted
    weights, the downloaded IKEA catalog)."""
    return Path(os.environ.get("VISLANG_CACHE", Path.home() / ".cache" / "vislang"))


def downloaded_ikea_dir() -> Path:
    """Where `vislang demo` and `vislang data download ikea` put the IKEA catalog by default."""
    return default_cache_dir() / "data" / "ikea"


class DataNotFoundError(FileNotFoundError):
    """The catalog folder could not be found; the message tells the user how to get it."""


def _how_to_get(tried: list[str]) -> str:
    return (
        "vislang could not find the IKEA catalog data (looked in: "
        + ", ".join(tried)
        + "). Pass --data DIR, or set VISLANG_DATA=DIR, pointing at a folder that holds "
        "products.jsonl, rooms.jsonl and images/. The data is the public dataset of Tautkute et al., "
        "'What Looks Good with my Sofa' (GitHub: IvonaTau/ikea), licensed for non-commercial research "
        "only; with internet access, `vislang data download ikea` fetches it into the cache folder "
        f"({downloaded_ikea_dir()}), where vislang then finds it (`vislang demo` does so by itself). To "
        "train on your own catalog instead, give --data a JSONL or CSV manifest "
        "(see README, 'Your own data')."
    )


def find_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Return the data location to use, or raise DataNotFoundError with instructions.

    The result may be a catalog folder, a shard folder (`vislang data prepare`) or a manifest file (.jsonl/.csv).
    """
    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if explicit is not None:
        candidates.append(("--data", Path(explicit)))
    elif os.environ.get(ENV_VAR):
        candidates.append((ENV_VAR, Path(os.environ[ENV_VAR])))
    else:
        # Relative to where the user stands and to the source checkout, so both work.
        candidates.append(("default", Path.cwd() / DEFAULT_RELATIVE))
        candidates.append(("default", Path(__file__).resolve().parents[2] / DEFAULT_RELATIVE))
        candidates.append(("downloaded", downloaded_ikea_dir()))
    for source, path in candidates:
        path = path.expanduser()
        if path.is_file() and path.suffix.lower() in {".jsonl", ".csv"}:
            return path
        if (path / "products.jsonl").is_file() or (path / "rooms.jsonl").is_file() or (path / "manifest.json").is_file():
            return path
        tried.append(f"{path} ({source})")
    raise DataNotFoundError(_how_to_get(tried))
