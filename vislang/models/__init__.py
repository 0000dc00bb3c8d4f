"""Model definition: towers, projections, tokenizer and the `create_model` factory."""
from .factory import create_model
from .model import VisLangModel
from .tokenizer import Tokenizer

__all__ = ["create_model", "VisLangModel", "Tokenizer"]
