"""vislang: vision-language pretraining and search for home and furniture catalogs."""
__version__ = "0.1.0"

from .api import VisLang, load
from .models import create_model

__all__ = ["Index", "VisLang", "__version__", "create_model", "load"]


def __getattr__(name: str):
    # vislang.Index on first use: training and evaluation never import faiss
    if name == "Index":
        from .search import Index

        return Index
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
