"""In-memory, device-resident batches for datasets that fit in memory.

The whole uint8 dataset lives on the training device; a batch is an index_select and a conversion to float,
which on CPU measured 20-300x faster than any DALI path for MNIST-size data. The epoch order comes from
torch's DistributedSampler, so one rank or many see the same seeded, reproducible shuffles.
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler


class UnpaddedDistributedSampler(DistributedSampler):
    """DistributedSampler's seeded per-epoch shuffle and rank interleaving, without the padding.

    DistributedSampler repeats samples so that every rank gets the same count; the copies would be counted twice
    in the loss. Here rank r keeps only the real samples of its share, so the ranks' batches of a step together
    are exactly the single-process global batch, and a rank may get a short or empty last batch (the trainer
    normalizes by the all-reduced global count). ``padded_len`` is the padded share length, the same on every rank.
    """

    def __init__(self, n: int, **kwargs):
        super().__init__(range(n), drop_last=False, **kwargs)
        self.padded_len = self.num_samples
        self.real_len = len(range(self.rank, n, self.num_replicas))

    def __len__(self) -> int:
        return self.real_len

    def __iter__(self):
        return iter(list(super().__iter__())[: self.real_len])


class RandomFlip:
    """Horizontal flips of a random half of each batch, seeded by (seed, rank, epoch, batch): reproducible and the
    same on resume."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = seed, rank

    def __call__(self, x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash((self.seed, self.rank, epoch, batch)) % 2**63)
        mask = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(mask, x.flip(-1), x)


# Up to this many bytes as float32 the dataset is kept pre-scaled, so that a batch is a single index_select; above
# it the uint8 bytes are kept (a quarter of the memory) and each batch is converted.
FLOAT_CACHE_BYTES = 512 * 2**20


class InMemoryLoader:
    def __init__(self, images: torch.Tensor, batch_size: int, *, device: torch.device | str = "cpu",
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, flip: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        as_float = images.numel() * 4 <= FLOAT_CACHE_BYTES
        self.images = images.to(device).float().div_(255.0) if as_float else images.to(device)
        self.batch_size = batch_size
        self.flipper = RandomFlip(seed, rank) if flip else None
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
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            yield self.flipper(x, self.epoch, b) if self.flipper else x
