"""The epoch order and augmentation shared by every loader: seeded, per-rank, reproducible on resume."""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler

from ..instrument import stage
from .errors import DataError


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


class Crop:
    """Crops of ``size`` x ``size`` from each image of a batch: centered, or (``random``) at offsets seeded by
    (seed, rank, epoch, batch), so that a run draws the same crops again when it resumes at that batch."""

    CROP_STREAM = 1  # keeps these draws apart from the flips' of the same batch

    def __init__(self, size: int, random: bool, seed: int = 0, rank: int = 0):
        self.size, self.random, self.seed, self.rank = size, random, seed, rank

    def __call__(self, x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        if x.dim() == 5:  # clips: one window for all the frames of a clip
            return self(x.flatten(1, 2), epoch, batch).unflatten(1, x.shape[1:3])
        height, width = x.shape[-2:]
        if height < self.size or width < self.size:
            raise ValueError(f"cannot crop {self.size}x{self.size} from {height}x{width} images")
        if (height, width) == (self.size, self.size):
            return x
        if not self.random or x.shape[0] == 0:
            top, left = (height - self.size) // 2, (width - self.size) // 2
            return x[..., top:top + self.size, left:left + self.size]
        g = torch.Generator().manual_seed(hash((self.seed, self.rank, epoch, batch, self.CROP_STREAM)) % 2**63)
        tops = torch.randint(height - self.size + 1, (x.shape[0],), generator=g)
        lefts = torch.randint(width - self.size + 1, (x.shape[0],), generator=g)
        span = torch.arange(self.size)
        rows = (tops[:, None] + span).to(x.device)  # [B, S]
        cols = (lefts[:, None] + span).to(x.device)
        picked = x[torch.arange(x.shape[0], device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2).contiguous()  # advanced indexing put the channels last


class FrameWindow:
    """``frames`` frames, every ``stride``-th, from each clip ``[B, C, T, H, W]`` of a batch: from a start seeded by
    (seed, rank, epoch, batch) per clip (``random``), or from the first frame."""

    WINDOW_STREAM = 2  # keeps these draws apart from the crops' and flips' of the same batch

    def __init__(self, frames: int, stride: int = 1, random: bool = True, seed: int = 0, rank: int = 0):
        self.frames, self.stride, self.random, self.seed, self.rank = frames, stride, random, seed, rank
        self.span = (frames - 1) * stride + 1

    def __call__(self, x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        length = x.shape[2]
        if length < self.span:
            raise ValueError(f"clips of {length} frames are shorter than --frames {self.frames} at stride "
                             f"{self.stride} ({self.span} frames)")
        if not self.random or x.shape[0] == 0 or length == self.span:
            return x[:, :, :self.span:self.stride]
        g = torch.Generator().manual_seed(hash((self.seed, self.rank, epoch, batch, self.WINDOW_STREAM)) % 2**63)
        starts = torch.randint(length - self.span + 1, (x.shape[0],), generator=g)
        index = (starts[:, None] + torch.arange(0, self.span, self.stride)).to(x.device)  # [B, frames]
        picked = x[torch.arange(x.shape[0], device=x.device)[:, None], :, index]  # [B, frames, C, H, W]
        return picked.transpose(1, 2).contiguous()


class OneFrameBatches:
    """A seeded share ``ratio`` of the batches of clips ``[B, C, T, H, W]`` turned into one-frame clips
    ``[B, C, 1, H, W]`` (one frame of each clip, at a random position in its window), so that a causal video
    autoencoder learns images and clips together, as Wan and Cosmos train. Whether batch b is one of them is drawn
    from (seed, epoch, batch) alone, so that every rank of a distributed run takes the same kind of step; which frame,
    from (seed, rank, epoch, batch). Both are drawn again alike on resume."""

    KIND_STREAM, FRAME_STREAM = 3, 4  # apart from the crops', flips' and windows' draws of the same batch

    def __init__(self, ratio: float, seed: int = 0, rank: int = 0):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"the share of one-frame batches must lie in [0, 1], got {ratio}")
        self.ratio, self.seed, self.rank = ratio, seed, rank

    def is_images(self, epoch: int, batch: int) -> bool:
        g = torch.Generator().manual_seed(hash((self.seed, epoch, batch, self.KIND_STREAM)) % 2**63)
        return bool(torch.rand((), generator=g) < self.ratio)

    def __call__(self, x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        if not self.is_images(epoch, batch):
            return x
        g = torch.Generator().manual_seed(hash((self.seed, self.rank, epoch, batch, self.FRAME_STREAM)) % 2**63)
        frames = torch.randint(x.shape[2], (x.shape[0],), generator=g).to(x.device)
        return x[torch.arange(x.shape[0], device=x.device), :, frames].unsqueeze(2).contiguous()


class Transforms:
    """Batch transforms applied in order, each called as ``t(x, epoch, batch)``."""

    def __init__(self, *transforms):
        self.transforms = [t for t in transforms if t is not None]

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def __call__(self, x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, epoch, batch)
        return x


def center_crop(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """The central ``size`` x ``size`` of every image (evaluation's crop); ``None`` keeps them."""
    return images if size is None else Crop(size, random=False)(images, 0, 0)


def split_indices(n: int, test_fraction: float, seed: int,
                  max_test: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded (train, test) index split every source uses: ``test_fraction`` of the images (at most
    ``max_test``), each side sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must lie in (0, 1), got {test_fraction}")
    n_test = max(1, int(round(n * test_fraction)))
    if max_test is not None:
        n_test = min(n_test, max_test)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def micro_batch_groups(batches, size: int):
    """``batches`` (an iterator) ``size`` at a time, the last group possibly smaller: an optimizer step's
    micro-batches under gradient accumulation. Time spent waiting for a batch is the profile's "data" stage."""
    group, batches = [], iter(batches)
    while True:
        with stage("data"):
            x = next(batches, None)
        if x is None:
            break
        group.append(x)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
