"""Data: catalog readers, image loading, training batches and the dataset download."""
from .catalog import Catalog, Item, read_catalog, read_ikea, read_manifest
from .locate import DataNotFoundError, find_data_dir

__all__ = ["Catalog", "Item", "read_catalog", "read_ikea", "read_manifest", "DataNotFoundError", "find_data_dir"]
