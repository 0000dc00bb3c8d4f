"""The `vislang` command line."""
from .main import main, run_for_user

__all__ = ["main", "run_for_user"]
