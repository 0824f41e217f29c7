"""Image data sources: the embedded Fashion-MNIST split and MNIST-style IDX directories or files.

Every source yields uint8 images ``[N, C, H, W]`` and, where the files provide them, labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .idx import read_idx

EMBEDDED = "embedded"
# Share of the images held out for the test metrics when the source has no test split of its own.
DEFAULT_TEST_FRACTION = 0.1


@dataclass
class ImageDataset:
    name: str
    train: torch.Tensor  # uint8 [N, C, H, W]
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train)} train / {len(self.test)} test images of shape "
                f"{'x'.join(map(str, self.image_shape))}")


def _as_nchw(images: np.ndarray, origin: str) -> torch.Tensor:
    if images.dtype != np.uint8:
        raise DataError(f"{origin}: expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DataError(f"{origin}: expected images of shape [N, H, W] or [N, C, H, W], got {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images))


def split(images: torch.Tensor, labels: torch.Tensor | None, test_fraction: float, seed: int):
    """A seeded random split into (train, test, train_labels, test_labels)."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must lie in (0, 1), got {test_fraction}")
    n_test = max(1, int(round(len(images) * test_fraction)))
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    pick = (lambda t, i: None if t is None else t[i])
    return images[train_idx], images[test_idx], pick(labels, train_idx), pick(labels, test_idx)


def embedded_fashion_mnist(test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0) -> ImageDataset:
    """The Fashion-MNIST t10k split shipped inside the package (MIT, Zalando SE), split into train and test."""
    folder = resources.files("vaefast.data").joinpath("fashion_mnist")
    with resources.as_file(folder) as path:
        images = _as_nchw(read_idx(path / "t10k-images-idx3-ubyte.gz"), "embedded Fashion-MNIST")
        labels = torch.from_numpy(read_idx(path / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    train, test, train_labels, test_labels = split(images, labels, test_fraction, seed)
    return ImageDataset("embedded Fashion-MNIST (t10k)", train, test, train_labels, test_labels)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_directory(folder: str | Path, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0) -> ImageDataset:
    """A directory holding train-images-idx3-ubyte[.gz] and (optionally) t10k-images-idx3-ubyte[.gz] and labels."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data directory not found: {folder}")
    train_path = _find(folder, "train-images-idx3-ubyte")
    test_path = _find(folder, "t10k-images-idx3-ubyte")
    if train_path is None and test_path is None:
        raise DataError(f"{folder}: no train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz] found")

    def load(images_path, labels_stem):
        images = _as_nchw(read_idx(images_path), str(images_path))
        labels_path = _find(folder, labels_stem)
        labels = None
        if labels_path is not None:
            labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
            if len(labels) != len(images):
                raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
        return images, labels

    if train_path is not None and test_path is not None:
        train, train_labels = load(train_path, "train-labels-idx1-ubyte")
        test, test_labels = load(test_path, "t10k-labels-idx1-ubyte")
        if train.shape[1:] != test.shape[1:]:
            raise DataError(f"{folder}: train images are {tuple(train.shape[1:])} but test images are "
                            f"{tuple(test.shape[1:])}")
        return ImageDataset(f"IDX {folder}", train, test, train_labels, test_labels)
    only = train_path or test_path
    images, labels = load(only, "train-labels-idx1-ubyte" if only == train_path else "t10k-labels-idx1-ubyte")
    return ImageDataset(f"IDX {only} (seeded {test_fraction:.0%} test split)", *split(images, labels, test_fraction, seed))


def load_dataset(spec: str | None, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0) -> ImageDataset:
    """Resolve ``--data``: None or 'embedded', an IDX directory, or a single IDX images file."""
    if spec in (None, "", EMBEDDED):
        return embedded_fashion_mnist(test_fraction, seed)
    path = Path(spec).expanduser()
    if path.is_dir():
        return idx_directory(path, test_fraction, seed)
    if not path.exists():
        raise DataError(f"--data path not found: {path}")
    if "idx" in path.name:
        images = _as_nchw(read_idx(path), str(path))
        return ImageDataset(f"IDX {path} (seeded {test_fraction:.0%} test split)",
                            *split(images, None, test_fraction, seed))
    raise DataError(f"--data {path}: unrecognised data source; expected an IDX directory or *-idx3-ubyte[.gz] file")
