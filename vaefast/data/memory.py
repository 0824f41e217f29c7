"""In-memory, device-resident batches for datasets that fit in memory.

The whole uint8 dataset lives on the training device; a batch is an index_select and a conversion to float,
which on CPU measured 20-300x faster than any DALI path for MNIST-size data. The epoch order comes from
torch's DistributedSampler, so one rank or many see the same seeded, reproducible shuffles.
"""

from __future__ import annotations

import torch

from .convert import to_unit_float
from .sampling import RandomFlip, Transforms, UnpaddedDistributedSampler


# Up to this many bytes as float32 the dataset is kept pre-scaled, so that a batch is a single index_select; above
# it the uint8 bytes are kept (a quarter of the memory) and each batch is converted.
FLOAT_CACHE_BYTES = 512 * 2**20


class InMemoryLoader:
    def __init__(self, images: torch.Tensor, batch_size: int, *, device: torch.device | str = "cpu",
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, flip: bool = False,
                 transform: Transforms | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        as_float = images.numel() * 4 <= FLOAT_CACHE_BYTES
        self.images = to_unit_float(images, device) if as_float else images.to(device)
        self.batch_size = batch_size
        self.flipper = RandomFlip(seed, rank) if flip else None
        self.transform = transform  # crops and clip windows, before the float conversion (fewer bytes to move)
        self.sampler = UnpaddedDistributedSampler(len(images), num_replicas=world_size, rank=rank, shuffle=shuffle,
                                                  seed=seed)
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch, equal on every rank (the last ones of a smaller share may be short or empty)."""
        return -(-self.sampler.padded_len // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def batches(self, start_batch: int = 0):
        """Float batches in [0, 1], ``[b, C, H, W]``, from batch ``start_batch`` of the current epoch on."""
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.images.device)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            if self.transform:
                x = self.transform(x, self.epoch, b)
            if x.dtype == torch.uint8:
                x = to_unit_float(x)
            yield self.flipper(x, self.epoch, b) if self.flipper else x
