"""Data sources and loaders."""

from .errors import DataError
from .memory import InMemoryLoader
from .factory import LOADERS, make_loader
from .sources import ImageDataset, load_dataset

__all__ = ["LOADERS", "DataError", "ImageDataset", "InMemoryLoader", "load_dataset", "make_loader"]
