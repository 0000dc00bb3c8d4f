"""Evaluation: retrieval metrics on a catalog split."""
from .retrieval import chance_levels, evaluate

__all__ = ["evaluate", "chance_levels"]
