"""Keys of the fused op's seeded noise (``reparameterize_kl(..., seed=...)``): one per forward pass, advanced on the
device, so that a step neither stores eps nor reads anything on the host, and a CUDA-graph replay sees a new key."""

from __future__ import annotations

import torch

_MASK64 = 2**64 - 1


def _splitmix64(x: int) -> int:
    """A 64-bit mixer (Steele et al., 2014): nearby (seed, rank) pairs map to unrelated bases."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class NoiseSeeds:
    """The key of draw k on rank r is ``base(seed, r) + k``: a random 63-bit base per rank (two ranks' runs of keys
    overlap only if their bases fall within the run's number of draws of each other) and a draw counter on the
    device. Checkpoints keep the counter, so a resumed run draws the same noise as an uninterrupted one."""

    def __init__(self, seed: int, rank: int, device: torch.device):
        self.base = _splitmix64(_splitmix64(seed) ^ rank) >> 1  # non-negative: fits an int64
        self.draws = torch.zeros((), dtype=torch.int64, device=device)

    def next(self) -> torch.Tensor:
        """A fresh one-element key for the next forward pass."""
        self.draws.add_(1)
        return (self.draws + self.base).view(1)

    def state_dict(self) -> dict:
        return {"draws": int(self.draws)}  # read on the host only when a checkpoint is written

    def load_state_dict(self, state: dict) -> None:
        self.draws.fill_(state["draws"])
