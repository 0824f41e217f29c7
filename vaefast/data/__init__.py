"""Data sources and loaders."""

from .errors import DataError
from .loader import InMemoryLoader
from .sources import ImageDataset, load_dataset

__all__ = ["DataError", "ImageDataset", "InMemoryLoader", "load_dataset"]
