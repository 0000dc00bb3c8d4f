"""vislang: vision-language pretraining and search for home and furniture catalogs."""
__version__ = "0.1.0"

__all__ = ["Index", "VisLang", "__version__", "create_model", "load"]

# Imported on first use: `vislang --version`, `--help` and argument errors answer without loading
# torch (seconds), and training and evaluation never import faiss (only `Index` does).
_LAZY = {"VisLang": ".api", "load": ".api", "create_model": ".models", "Index": ".search"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
