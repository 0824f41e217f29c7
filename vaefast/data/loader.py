"""In-memory, device-resident batches for datasets that fit in memory.

The whole uint8 dataset lives on the training device; a batch is an index_select and a conversion to float,
which on CPU measured 20-300x faster than any DALI path for MNIST-size data. The epoch order comes from
torch's DistributedSampler, so one rank or many see the same seeded, reproducible shuffles.
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler


class InMemoryLoader:
    def __init__(self, images: torch.Tensor, batch_size: int, *, device: torch.device | str = "cpu",
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 labels: torch.Tensor | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.images = images.to(device)
        self.labels = None if labels is None else labels.to(device)
        self.batch_size = batch_size
        # DistributedSampler needs only len() of its "dataset"; drop_last=False pads by repeating indices so that
        # every rank runs the same number of steps.
        self.sampler = DistributedSampler(range(len(images)), num_replicas=world_size, rank=rank, shuffle=shuffle,
                                          seed=seed, drop_last=False)
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def batches(self, start_batch: int = 0):
        """Float batches in [0, 1], ``[b, C, H, W]``, from batch ``start_batch`` of the current epoch on."""
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.images.device)
        for start in range(start_batch * self.batch_size, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.images.index_select(0, idx).float().div_(255.0)
