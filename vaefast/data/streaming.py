"""Loaders for image folders that are decoded while training: a torch DataLoader, and NVIDIA DALI pipelines.

Both shard the files across DDP ranks so that every rank runs the same number of steps per epoch, and both
yield float batches in [0, 1], ``[b, C, H, W]``, on the training device, like the in-memory loader.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DataError
from .folders import ImageFolder, decode, first_undecodable, is_array_folder
from .shards import IMAGE_EXTENSIONS, index_paths, list_shards
from .convert import to_unit_float
from .sampling import Crop, RandomFlip, Transforms, UnpaddedDistributedSampler

log = logging.getLogger("vaefast.data")


class _TensorItems(Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


class _FolderItems(Dataset):
    def __init__(self, folder: ImageFolder, files):
        self.folder, self.files = folder, files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        array = decode(self.files[i], self.folder.channels, self.folder.size)
        if array.shape != self.folder.image_shape:
            raise DataError(f"mixed image sizes: {self.files[i]} decodes to {array.shape}, expected "
                            f"{self.folder.image_shape}; pass --image-size")
        return torch.from_numpy(array)


class TorchLoader:
    """A torch DataLoader with DistributedSampler semantics: PIL decoding in worker processes for image folders
    (the fallback without DALI), plain indexing for in-memory arrays."""

    def __init__(self, source: ImageFolder | torch.Tensor, batch_size: int, *, device="cpu", seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 2, flip: bool = False,
                 transform: Transforms | None = None, out_shape: tuple | None = None):
        """``transform``: crops and clip windows per batch; ``out_shape``: the shape of an item after them (for the
        empty batches of a rank with a smaller share)."""
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.flipper = RandomFlip(seed, rank) if flip else None
        self.transform, self.out_shape = transform, out_shape
        if isinstance(source, ImageFolder):
            self.dataset, self.image_shape = _FolderItems(source, source.train_files), source.image_shape
        else:  # indexing memory needs no worker processes
            self.dataset, self.image_shape, num_workers = _TensorItems(source), tuple(source.shape[1:]), 0
        self.sampler = UnpaddedDistributedSampler(len(self.dataset), num_replicas=world_size, rank=rank,
                                                  shuffle=True, seed=seed)
        self.num_workers = num_workers

    def __len__(self) -> int:
        return math.ceil(self.sampler.padded_len / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def batches(self, start_batch: int = 0):
        indices = list(self.sampler)[start_batch * self.batch_size:]
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=False)
        produced = start_batch
        for batch in loader:
            if self.transform:  # keyed by the batch's index in the epoch, as the in-memory loader's
                batch = self.transform(batch, self.sampler.epoch, produced)
            produced += 1
            x = to_unit_float(batch, self.device)
            yield self.flipper(x, self.sampler.epoch, produced) if self.flipper else x
        shape = (0, *(self.out_shape or self.image_shape))
        for _ in range(produced, len(self)):  # a smaller share ends in empty batches: every rank steps alike
            yield torch.empty(shape, device=self.device)


def _whole_shards(folder: ImageFolder):
    """The shards behind the train samples. DALI reads whole shards, so every image sample in them must be one
    (--skip-bad-images cannot leave single samples out here)."""
    paths = list(dict.fromkeys(member.shard for member in folder.train_files))
    complete = list_shards(paths)
    if len(complete) != len(folder.train_files):
        kept = set(folder.train_files)
        left_out = next(m for m in complete if m not in kept)
        raise DataError(f"undecodable image {left_out}: DALI reads whole tar shards and cannot leave it out; repair "
                        "or drop that shard, or use --loader torch --skip-bad-images")
    return paths


def dali_square_and_crop(images, square: tuple[int, int], channels: int, flip: bool, crop: Crop | None, layout: str):
    """Inside a DALI pipeline: the central ``square`` of decoded HWC images (or FHWC clips), channels first
    (``layout``) and scaled to [0, 1] in one operator, flipped at random when asked; then the training crop, at
    DALI's own seeded random position."""
    from nvidia.dali import fn, types

    images = fn.crop_mirror_normalize(images, crop=square, crop_pos_x=0.5, crop_pos_y=0.5,
                                      mirror=fn.random.coin_flip() if flip else 0, dtype=types.FLOAT,
                                      output_layout=layout, mean=[0.0] * channels, std=[255.0] * channels)
    if crop is not None and crop.size != square[0]:
        where = dict(crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
                     crop_pos_y=fn.random.uniform(range=[0.0, 1.0])) if crop.random else {}
        images = fn.crop(images, crop=(crop.size, crop.size), **where)
    return images


def dali_unavailable_reason() -> str | None:
    """None when DALI imports, else why not."""
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali.plugin.pytorch import DALIGenericIterator  # noqa: F401
    except ImportError as exc:
        return f"NVIDIA DALI is not installed ({exc}); pip install nvidia-dali-cuda130"
    return None


class DALIFolderLoader:
    """fn.readers.file (or fn.readers.webdataset for tar shards) + fn.decoders.image + resize/crop/flip/normalize,
    or fn.readers.numpy for .npy files, output through DALIGenericIterator.

    The same pipeline runs on CPU and GPU: only the decoder's device ("mixed" vs "cpu") and ``device_id`` (0.. vs
    None, which CPU-only DALI requires) come from ``torch.cuda.is_available()``. Sharding uses shard_id/num_shards
    with pad_last_batch=True and LastBatchPolicy.PARTIAL (DROP with unequal shards returned padding-only batches
    every other epoch, and without padding the epochs drift); a rank's last batch may therefore be short or empty,
    which the trainer handles by normalizing with the global sample count.
    """

    def __init__(self, folder: ImageFolder, batch_size: int, *, device="cpu", seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_threads: int = 2, flip: bool = False, crop: Crop | None = None):
        reason = dali_unavailable_reason()
        if reason:
            raise DataError(reason)
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.device = torch.device(device)
        gpu = self.device.type == "cuda"
        self.folder, self.batch_size = folder, batch_size
        self.world_size, self.rank = world_size, rank
        files = [str(p) for p in folder.train_files]
        tar_paths = _whole_shards(folder) if folder.shards else None
        channels, size = folder.channels, folder.size
        out_h, out_w = folder.image_shape[1:]
        arrays = is_array_folder(folder.train_files)
        array_layout = np.load(files[0], mmap_mode="r").shape if arrays else None

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=(self.device.index or 0) if gpu else None,
                      seed=seed, prefetch_queue_depth=2)
        def pipeline():
            shard = dict(shard_id=rank, num_shards=world_size, random_shuffle=True, pad_last_batch=True,
                         name="reader", seed=seed)
            if arrays:  # .npy shards: numpy reader, then CHW float in [0, 1] (and a random flip, if asked)
                images = fn.readers.numpy(files=files, device="gpu" if gpu else "cpu", **shard)
                if len(array_layout) == 2:
                    images = fn.reshape(images, shape=[1, *array_layout])
                elif array_layout[-1] in (1, 3, 4) and array_layout[0] not in (1, 3, 4):
                    images = fn.transpose(images, perm=[2, 0, 1])
                images = fn.cast(images, dtype=types.FLOAT) * (1.0 / 255.0)
                if flip:
                    images = fn.flip(images, horizontal=fn.random.coin_flip(), layout="CHW")
                return images
            if tar_paths:
                jpegs = fn.readers.webdataset(paths=[str(p) for p in tar_paths], index_paths=index_paths(tar_paths),
                                              ext=[";".join(IMAGE_EXTENSIONS)], case_sensitive_extensions=False,
                                              missing_component_behavior="skip", **shard)
            else:
                jpegs, _ = fn.readers.file(files=files, **shard)
            images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu",
                                       output_type=types.GRAY if channels == 1 else types.RGB)
            if size is not None:
                images = fn.resize(images, resize_shorter=size, antialias=True)
            # The central square (as the other loaders decode it), channels first, scaled to [0, 1] in one
            # operator; then the training crop, at DALI's own seeded random position.
            return dali_square_and_crop(images, (out_h, out_w), channels, flip, crop, "CHW")

        self.pipe = pipeline()
        self.pipe.build()
        self.iterator = DALIGenericIterator([self.pipe], ["images"], reader_name="reader",
                                            last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
        # Every rank's shard is padded to the same size, so ceil(shard / batch) steps per rank.
        self._steps = math.ceil(math.ceil(len(files) / world_size) / batch_size)

    def __len__(self) -> int:
        return self._steps

    def set_epoch(self, epoch: int) -> None:
        pass  # DALI's reader reshuffles itself every epoch (seeded)

    def batches(self, start_batch: int = 0):
        try:
            for i, data in enumerate(self.iterator):
                if i < start_batch:
                    continue
                yield data[0]["images"].to(self.device, non_blocking=True)
        except RuntimeError as exc:
            # DALI's decoder fails without naming the file; find it (only on this failure path).
            bad = first_undecodable(self.folder.train_files)
            where = f"undecodable image {bad}" if bad else "a DALI pipeline error"
            if bad and self.folder.shards:
                raise DataError(f"{where} (DALI: {str(exc).splitlines()[0]}); repair or drop that shard, or read "
                                "the shards with --loader torch --skip-bad-images, which leaves single samples "
                                "out") from None
            raise DataError(f"{where} (DALI: {str(exc).splitlines()[0]}); remove it, or pass --skip-bad-images, "
                            "which verifies the files up front and leaves the bad ones out") from None
