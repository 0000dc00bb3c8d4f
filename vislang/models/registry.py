"""Tower registries: a dict from `kind` to a class, one way to build from a config section, and
the one error raised when pretrained weights cannot be had."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn


def build_tower(registry: dict[str, Callable[..., nn.Module]], cfg: dict[str, Any], what: str, **extra: Any) -> nn.Module:
    kind = cfg["kind"]
    if kind not in registry:
        raise ValueError(f"unknown {what} kind {kind!r}; choose from {sorted(registry)}")
    return registry[kind](cfg["name"], pretrained=cfg["pretrained"], **extra, **cfg["kwargs"])


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights were asked for but could not be fetched (for example offline)."""


def unavailable(what: str, err: Exception, offline_hint: str) -> PretrainedUnavailableError:
    return PretrainedUnavailableError(
        f"could not load pretrained weights for {what}: {err}. Pretrained weights are downloaded from "
        f"their hub on first use and need internet access; {offline_hint}."
    )
