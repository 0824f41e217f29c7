"""Choosing the loader: ``--loader auto|memory|dali|torch``."""

from __future__ import annotations

import logging
import math
import os
from typing import get_args

import torch

from ..config.sections import Loader
from .errors import DataError
from .folders import without_undecodable
from .memory import InMemoryLoader
from .sampling import Crop, FrameWindow, OneFrameBatches, Transforms
from .sources import ImageDataset
from .streaming import DALIFolderLoader, TorchLoader, dali_unavailable_reason

LOADERS = get_args(Loader)  # the choices of --loader, declared once in vaefast.config
log = logging.getLogger("vaefast.data")


def memory_budget(device: torch.device) -> int:
    """Bytes the decoded uint8 train split may take to be kept in memory: a quarter of the device's memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def choose_loader(kind: str, dataset: ImageDataset, device: torch.device) -> tuple[str, str]:
    """The loader to use and why."""
    if kind not in LOADERS:
        raise DataError(f"unknown loader {kind!r}; choose one of {', '.join(LOADERS)}")
    if kind != "auto":
        return kind, "requested"
    if dataset.train is not None:
        return "memory", "the data is already in memory"
    if dataset.clip_files is not None:  # clips are decoded whole: no streaming PyAV loader
        decoded = dataset.num_train * math.prod(dataset.image_shape)
        if decoded > memory_budget(device) and dali_unavailable_reason() is None:
            return "dali", f"the decoded train clips' windows ({decoded / 2**30:.1f} GiB) do not fit in memory"
        return "memory", "clips other than DALI's are decoded into memory"
    decoded = dataset.num_train * math.prod(dataset.image_shape)
    if decoded <= memory_budget(device):
        return "memory", f"the decoded train split ({decoded / 2**30:.2f} GiB) fits in a quarter of {device.type} memory"
    if dali_unavailable_reason() is None:
        return "dali", f"the decoded train split ({decoded / 2**30:.1f} GiB) does not fit in memory"
    return "torch", "the train split does not fit in memory and DALI is not installed"


def make_loader(kind: str, dataset: ImageDataset, batch_size: int, *, device, seed: int = 0, rank: int = 0,
                world_size: int = 1, skip_bad: bool = False, num_workers: int = 2, flip: bool = False,
                crop: str = "center", frame_stride: int | None = None, image_ratio: float = 0.0):
    """``crop``: random or center crops of the dataset's image size from larger decoded images (image folders and
    shards with --resize; auto is random for them). Clips get a window of the dataset's frame count, every
    ``frame_stride``-th frame (default: the dataset's), at a random start; ``image_ratio`` of the batches then keep
    one frame of each clip."""
    device = torch.device(device)
    frame_stride = dataset.frame_stride if frame_stride is None else frame_stride
    kind, why = choose_loader(kind, dataset, device)
    log.info("loader: %s (%s)", kind, why)
    cropper = window = one_frame = None
    larger = (dataset.train is not None and dataset.train.shape[-1] > dataset.image_shape[-1]) or \
        (dataset.clip_size or 0) > dataset.image_shape[-1]
    if dataset.folder is not None or larger:  # image folders, shards, and clip folders decoded with --resize
        cropper = Crop(dataset.image_shape[-1], random=crop in ("random", "auto"), seed=seed, rank=rank)
    if len(dataset.image_shape) == 4:
        window = FrameWindow(dataset.image_shape[1], frame_stride, random=True, seed=seed, rank=rank)
        if image_ratio > 0:
            one_frame = OneFrameBatches(image_ratio, seed=seed, rank=rank)
    elif image_ratio > 0:
        raise DataError(f"--image-ratio turns batches of clips into one-frame clips; {dataset.name} holds images")
    common = dict(device=device, seed=seed, rank=rank, world_size=world_size, flip=flip)
    transform = Transforms(cropper, window, one_frame)
    if kind == "dali" and dataset.clip_files is not None:
        from .video_dali import DALIClipLoader, dali_video_unsupported

        unsupported = dali_video_unsupported(dataset.clip_files, device)
        if unsupported is None:
            loader = DALIClipLoader(dataset.clip_files, dataset.image_shape[1], batch_size,
                                    frame_stride=frame_stride, size=dataset.clip_size,
                                    out_size=dataset.clip_size or dataset.image_shape[-1], crop=cropper,
                                    num_threads=max(1, num_workers), transform=Transforms(one_frame), **common)
            return loader, kind, why
        kind, why = "memory", f"DALI cannot read these clips here ({unsupported}): decoded with PyAV instead"
        log.warning("loader: %s", why)
    elif kind != "memory" and dataset.clip_files is not None:
        kind, why = "memory", "clips other than DALI's are decoded into memory with PyAV"
    if kind == "memory":
        dataset.materialize(skip_bad)
        return InMemoryLoader(dataset.train, batch_size, transform=transform, **common), kind, why
    if kind == "dali":
        if dataset.folder is None:
            raise DataError("--loader dali reads image folders; this source is an in-memory array: use --loader "
                            "memory (for MNIST-size data it is 20-300x faster than any DALI path)")
        folder = without_undecodable(dataset.folder) if skip_bad else dataset.folder
        return DALIFolderLoader(folder, batch_size, num_threads=max(1, num_workers), crop=cropper, **common), \
            kind, why
    source = dataset.folder if dataset.train is None else dataset.train
    if skip_bad and dataset.folder is not None and dataset.train is None:
        source = without_undecodable(dataset.folder)
    return TorchLoader(source, batch_size, num_workers=num_workers, transform=transform,
                       out_shape=dataset.image_shape, **common), kind, why
