"""Tower registries: a dict from `kind` to a class, one way to build from a config section, and
the one error raised when pretrained weights cannot be had."""
from __future__ import annotations

import difflib
from typing import Any, Callable

from torch import nn

from ..config import ConfigError


def build_tower(registry: dict[str, Callable[..., nn.Module]], cfg: dict[str, Any], what: str, **extra: Any) -> nn.Module:
    kind = cfg["kind"]
    if kind not in registry:
        raise ConfigError(f"unknown {what} kind {kind!r}; choose from {sorted(registry)}")
    return registry[kind](cfg["name"], pretrained=cfg["pretrained"], **extra, **cfg["kwargs"])


def unknown_name(key: str, name: str, library: str, known: list[str]) -> ConfigError:
    """The error for a model name the library does not have, with the nearest names it does."""
    near = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return ConfigError(f"{key}: {library} has no model named {name!r}{hint}")


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights were asked for but could not be fetched (for example offline)."""


def unavailable(what: str, err: Exception, offline_hint: str) -> PretrainedUnavailableError:
    return PretrainedUnavailableError(
        f"could not load pretrained weights for {what}: {err}. Pretrained weights are downloaded from "
        f"their hub on first use and need internet access; {offline_hint}."
    )
