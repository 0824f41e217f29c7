"""Image folders: JPEG/PNG files found recursively, decoded with Pillow (in-memory and torch loaders) or DALI;
and folders of ``.npy`` array shards, one image per file (``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``, resolved as
for NumPy sources), read with NumPy or DALI's numpy reader.

With a size every image is resized so that its shorter side is that size and then center-cropped to a square
(``--resize``, else ``--image-size``; the training loaders then crop ``--image-size`` from it, vaefast.data.sampling's
``Crop``); without one all images must share one size. The channel count follows the first image: grayscale stays one
channel, anything else becomes RGB. Subfolder names, when the images sit in subfolders, become class labels (for
the latent scatter plot).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .sampling import split_indices
from .shards import ShardMember

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
ARRAY_SUFFIX = ".npy"
# The held-out test images are kept in memory for the metrics: a fraction of the folder, at most this many.
MAX_TEST_IMAGES = 10_000
log = logging.getLogger("vaefast.data")


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | {ARRAY_SUFFIX}
                   and p.is_file())
    if not files:
        raise DataError(f"image folder {root} holds no .png, .jpg or .jpeg files (searched recursively)")
    arrays = sum(p.suffix.lower() == ARRAY_SUFFIX for p in files)
    if 0 < arrays < len(files):
        raise DataError(f"{root} mixes {arrays} .npy files with {len(files) - arrays} image files; keep one kind "
                        "per folder")
    return files


def is_array_folder(files: list[Path | ShardMember]) -> bool:
    return isinstance(files[0], Path) and files[0].suffix.lower() == ARRAY_SUFFIX


def image_channels(first: Path | ShardMember) -> int:
    """Grayscale stays one channel; anything else becomes RGB."""
    return 1 if _open(first).mode in ("L", "1", "I;16", "I") else 3


def _open(path: Path | ShardMember):
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(path.read()) if isinstance(path, ShardMember) else path)
        img.load()
        return img
    except MemoryError:
        raise
    except Exception as exc:  # UnidentifiedImageError, OSError, ... or whatever else a decoder raises
        raise DataError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from exc


def _load_array(path: Path) -> np.ndarray:
    from .arrays import to_nchw, to_uint8

    try:
        array = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as exc:  # a corrupt header fails in numpy's tokenizer, not only with ValueError
        raise DataError(f"cannot read array shard {path}: {type(exc).__name__}: {exc}") from exc
    return to_uint8(to_nchw(array[None], str(path)), str(path))[0]


def decode(path: Path | ShardMember, channels: int, size: int | None) -> np.ndarray:
    """One image, from a file or a tar shard, as uint8 [C, H, W]."""
    from PIL import Image

    if isinstance(path, Path) and path.suffix.lower() == ARRAY_SUFFIX:
        if size is not None:
            raise DataError(f"{path}: --image-size resizes image files; .npy shards must already share one size")
        return _load_array(path)
    img = square(_open(path).convert("L" if channels == 1 else "RGB"), size)
    array = np.array(img, dtype=np.uint8)  # a copy: torch.from_numpy needs a writable array
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def square(img, size: int | None):
    """A PIL image with its shorter side resized to ``size`` and center-cropped to a square (``None``: as it is)."""
    from PIL import Image

    if size is None:
        return img
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


@dataclass
class ImageFolder:
    """Images decoded while training: files in a folder, or the members of WebDataset tar shards."""

    root: Path
    train_files: list[Path] | list[ShardMember]
    test_files: list[Path] | list[ShardMember]
    channels: int
    size: int | None
    image_shape: tuple[int, int, int]
    classes: list[str] = field(default_factory=list)

    def label(self, path: Path) -> int:
        return self.classes.index(path.parent.name) if self.classes else 0

    @property
    def shards(self) -> bool:
        return isinstance(self.train_files[0], ShardMember)

    def decode_all(self, files: list[Path], skip_bad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decode ``files`` into uint8 [N, C, H, W]; a bad file raises naming it, or is skipped and counted."""
        images, labels, skipped = [], [], []
        for path in files:
            try:
                array = decode(path, self.channels, self.size)
            except DataError:
                if not skip_bad:
                    raise
                skipped.append(path)
                continue
            if array.shape != self.image_shape:
                raise DataError(f"mixed image sizes: {path} is {array.shape[2]}x{array.shape[1]} but "
                                f"{self.train_files[0]} is {self.image_shape[2]}x{self.image_shape[1]}; pass "
                                "--image-size to resize and center-crop them to one size")
            images.append(array)
            labels.append(self.label(path))
        if skipped:
            log.warning("skipped %d undecodable images (first: %s)", len(skipped), skipped[0])
        if not images:
            raise DataError(f"no decodable images among {len(files)} files in {self.root}")
        label_tensor = torch.tensor(labels) if self.classes else None
        return torch.from_numpy(np.stack(images)), label_tensor


def image_folder(root: str | Path, *, size: int | None = None, test_fraction: float = 0.1,
                 seed: int = 0) -> ImageFolder:
    root = Path(root)
    files = list_images(root)
    if is_array_folder(files):
        shape = decode(files[0], 0, size).shape
        channels = shape[0]
    else:
        channels = image_channels(files[0])
        shape = decode(files[0], channels, size).shape
    if len(files) < 2:
        raise DataError(f"image folder {root} holds only {len(files)} image; need at least 2 for a train/test split")
    train_idx, test_idx = split_indices(len(files), test_fraction, seed, max_test=MAX_TEST_IMAGES)
    test = sorted(files[i] for i in test_idx.tolist())
    train = sorted(files[i] for i in train_idx.tolist())
    parents = sorted({p.parent.name for p in files})
    classes = parents if len(parents) > 1 and all(p.parent != root for p in files) else []
    return ImageFolder(root, train, test, channels, size, tuple(shape), classes)


def _readable(path: Path | ShardMember) -> bool:
    try:
        _load_array(path) if is_array_folder([path]) else _open(path)
        return True
    except DataError:
        return False


def first_undecodable(files) -> Path | None:
    """The first file that cannot be decoded, or None."""
    return next((path for path in files if not _readable(path)), None)


def without_undecodable(folder: ImageFolder) -> ImageFolder:
    """The folder with its undecodable train files left out, and the count logged (for --skip-bad-images)."""
    good = [path for path in folder.train_files if _readable(path)]
    skipped = len(folder.train_files) - len(good)
    if skipped:
        log.warning("skipping %d undecodable images of %d", skipped, len(folder.train_files))
    folder.train_files = good
    return folder
