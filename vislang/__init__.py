"""vislang: vision-language pretraining and search for home and furniture catalogs."""
__version__ = "0.1.0"

from .api import VisLang, load
from .models import create_model

__all__ = ["__version__", "VisLang", "load", "create_model"]
