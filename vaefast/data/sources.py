"""Image data sources: the embedded Fashion-MNIST split and MNIST-style IDX directories or files.

Every source yields uint8 images ``[N, C, H, W]`` and, where the files provide them, labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .arrays import numpy_images
from .errors import DataError
from .folders import MAX_TEST_IMAGES, ImageFolder, decode, image_channels, image_folder
from .idx import read_idx
from .sampling import center_crop, split_indices
from .shards import is_shard_spec, list_shards, split_shards

EMBEDDED = "embedded"
# Share of the images held out for the test metrics when the source has no test split of its own.
DEFAULT_TEST_FRACTION = 0.1


@dataclass
class ImageDataset:
    name: str
    train: torch.Tensor | None  # uint8 [N, C, H, W]; None while an image folder's train split is only listed
    test: torch.Tensor  # always in memory, for the metrics
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    folder: ImageFolder | None = None  # set for image folders: the files behind the streaming loaders
    frame_stride: int = 1  # clips: the test clips' (and first_train_images') stride
    clip_files: list | None = None  # clips of a folder or shards, decoded by materialize() or read by DALI
    clip_size: int | None = None  # the square their frames are decoded to

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.test.shape[1:])

    @property
    def num_train(self) -> int:
        if self.train is not None:
            return len(self.train)
        return len(self.clip_files) if self.clip_files is not None else len(self.folder.train_files)

    def materialize(self, skip_bad: bool = False) -> "ImageDataset":
        """Decode an image folder's or the clips' train split into memory (no-op for in-memory sources)."""
        if self.train is None and self.clip_files is not None:
            self.train = self._decode_clips(self.clip_files)
        elif self.train is None:
            self.train, self.train_labels = self.folder.decode_all(self.folder.train_files, skip_bad)
        return self

    def _decode_clips(self, files) -> torch.Tensor:
        from .clips import decode_clips

        clips = decode_clips(files, frames=self.image_shape[1], frame_stride=self.frame_stride, size=self.clip_size,
                             channels=self.image_shape[0])
        if self.clip_size is None and clips.shape[3:] != self.image_shape[2:]:
            raise DataError(f"{self.name}: the train clips' frames are {tuple(clips.shape[3:])}, the test clips' "
                            f"{self.image_shape[2:]}; pass --image-size to resize every frame to one size")
        return clips

    def first_train_images(self, n: int) -> torch.Tensor:
        """The first ``n`` training images (decoded from a folder or shards when they are not in memory)."""
        if self.train is None and self.clip_files is not None:
            images = self._decode_clips(self.clip_files[:n])
        elif self.train is not None:
            images = self.train[:n]
        else:
            images = self.folder.decode_all(self.folder.train_files[:n])[0]
        if images.dim() == 5:
            return first_frames(images, self.image_shape[1], self.frame_stride, self.name)
        return center_crop(images, self.image_shape[-1]) if images.shape[1:] != self.image_shape else images

    def describe(self) -> str:
        return (f"{self.name}: {self.num_train} train / {len(self.test)} test images of shape "
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
    train_idx, test_idx = split_indices(len(images), test_fraction, seed)
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


def _folder_dataset(root: Path, image_size, resize, test_fraction, seed, skip_bad) -> ImageDataset:
    folder = image_folder(root, size=resize or image_size, test_fraction=test_fraction, seed=seed)
    test, test_labels = folder.decode_all(folder.test_files, skip_bad)
    test = center_crop(test, image_size if resize else None)
    return ImageDataset(f"image folder {root} (seeded test split of {len(folder.test_files)})", None, test,
                        None, test_labels, folder=folder)


def _shard_dataset(spec: str, image_size, resize, skip_bad) -> ImageDataset:
    train_paths, test_paths = split_shards(spec)
    train, test = list_shards(train_paths), list_shards(test_paths)[:MAX_TEST_IMAGES]
    channels = image_channels(train[0])
    shape = decode(train[0], channels, resize or image_size).shape
    folder = ImageFolder(train_paths[0].parent, train, test, channels, resize or image_size, tuple(shape))
    test_images = center_crop(folder.decode_all(test, skip_bad)[0], image_size if resize else None)
    return ImageDataset(f"WebDataset {spec}: {len(train_paths)} train shards, {len(test_paths)} test shard(s)",
                        None, test_images, folder=folder)


def _clip_shard_dataset(spec: str, image_size, resize, frames, frame_stride) -> ImageDataset:
    from .clips import VIDEO_EXTENSIONS

    train_paths, test_paths = split_shards(spec)
    train = list_shards(train_paths, VIDEO_EXTENSIONS)
    test = list_shards(test_paths, VIDEO_EXTENSIONS)[:MAX_TEST_IMAGES]
    return _clips(f"WebDataset clips {spec}: {len(train)} train clips in {len(train_paths)} shards, {len(test)} "
                  "test clips", train, test, image_size, resize, frames, frame_stride)


def _clips(name: str, train_files, test_files, image_size, resize, frames, frame_stride) -> ImageDataset:
    """Clips listed as files (video files, folders of frames, video members of shards): the test clips decoded now,
    the train clips when a loader asks (the memory and torch loaders decode them, DALI reads the files)."""
    from .clips import decode_clips

    size = resize or image_size
    test = decode_clips(test_files, frames=frames, frame_stride=frame_stride, size=size)
    return ImageDataset(name, None, center_crop(test, image_size if resize else None), clip_files=train_files,
                        clip_size=size)


def _is_idx_dir(path: Path) -> bool:
    return any(_find(path, stem) for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"))


def load_dataset(spec: str | None, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0, *,
                 image_size: int | None = None, resize: int | None = None, skip_bad: bool = False,
                 frames: int | None = None, frame_stride: int = 1) -> ImageDataset:
    """Resolve ``--data``: None or 'embedded'; an IDX directory, IDX file, or 'train-file,test-file' pair; a .npy
    or .npz array; a folder of JPEG/PNG images (searched recursively); or WebDataset tar shards (see
    :mod:`vaefast.data.shards`). Folders and shards decode to squares of side ``resize`` (default ``image_size``);
    their test images are center-cropped to ``image_size``, the training loaders crop each batch. Clips, with
    ``frames``: a rank-5 array ``[N, T, H, W, C]``, a folder of clips or shards of video files; the test clips keep
    their first ``frames`` frames (every ``frame_stride``-th), the training loaders take a window of each."""
    dataset = _load(spec, test_fraction, seed, image_size, resize, skip_bad, frames, frame_stride)
    if dataset.test.dim() == 5:
        dataset.test = first_frames(dataset.test, frames or dataset.test.shape[2], frame_stride, dataset.name)
        dataset.frame_stride = frame_stride
    elif frames is not None:
        raise DataError(f"--frames takes a window of clips; {dataset.name} holds images")
    return dataset


def first_frames(clips: torch.Tensor, frames: int, stride: int, origin: str) -> torch.Tensor:
    """The first ``frames`` frames of each clip, every ``stride``-th: evaluation's window."""
    span = (frames - 1) * stride + 1
    if clips.shape[2] < span:
        raise DataError(f"{origin}: clips of {clips.shape[2]} frames are shorter than --frames {frames} at "
                        f"--frame-stride {stride} ({span} frames)")
    return clips[:, :, :span:stride].contiguous()


def _clip_dataset(root: Path, image_size, resize, test_fraction, seed, frames, frame_stride) -> ImageDataset:
    from .clips import list_clips

    paths = list_clips(root)
    train, test = split_indices(len(paths), test_fraction, seed)
    return _clips(f"clip folder {root} ({len(paths)} clips, seeded {test_fraction:.0%} test split)",
                  [paths[i] for i in train], [paths[i] for i in test], image_size, resize, frames, frame_stride)


def _load(spec, test_fraction, seed, image_size, resize, skip_bad, frames=None, frame_stride=1) -> ImageDataset:
    if spec in (None, "", EMBEDDED):
        return embedded_fashion_mnist(test_fraction, seed)
    if is_shard_spec(spec) and frames is not None:  # --frames: samples of video files
        return _clip_shard_dataset(spec, image_size, resize, frames, frame_stride)
    if is_shard_spec(spec):
        return _shard_dataset(spec, image_size, resize, skip_bad)
    if "," in spec:
        train_path, test_path = (Path(p).expanduser() for p in spec.split(",", 1))
        train, test = (_as_nchw(read_idx(p), str(p)) for p in (train_path, test_path))
        if train.shape[1:] != test.shape[1:]:
            raise DataError(f"{train_path} holds {tuple(train.shape[1:])} images but {test_path} holds "
                            f"{tuple(test.shape[1:])}")
        return ImageDataset(f"IDX {train_path} + {test_path}", train, test)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"--data path not found: {path}")
    if path.is_dir():
        if _is_idx_dir(path):
            return idx_directory(path, test_fraction, seed)
        if frames is not None:  # --frames: a folder of clips (video files or folders of frames)
            return _clip_dataset(path, image_size, resize, test_fraction, seed, frames, frame_stride)
        return _folder_dataset(path, image_size, resize, test_fraction, seed, skip_bad)
    if path.suffix in (".npy", ".npz"):
        images = numpy_images(path)
        train, test, _, _ = split(images, None, test_fraction, seed)
        return ImageDataset(f"NumPy {path} (seeded {test_fraction:.0%} test split)", train, test)
    if "idx" in path.name:
        images = _as_nchw(read_idx(path), str(path))
        return ImageDataset(f"IDX {path} (seeded {test_fraction:.0%} test split)",
                            *split(images, None, test_fraction, seed))
    raise DataError(f"--data {path}: unrecognised data source; expected an IDX directory or file, a .npy/.npz "
                    "array, or a folder of .png/.jpg images")
