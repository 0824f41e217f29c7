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
    device. Checkpoints keep the counter, so a resumed run draws the same noise as an uninterrupted one.

    The device tensor holds the last key itself, not the count: drawing is then one in-place add (each op in the
    step costs more than its kernel: see docs/performance.md on issue #28). The key handed out is that tensor: it
    stays valid until the next ``next()``, which is after the backward of the pass that used it."""

    def __init__(self, seed: int, rank: int, device: torch.device):
        self.base = _splitmix64(_splitmix64(seed) ^ rank) >> 1  # non-negative: fits an int64
        self.key = torch.tensor([_as_int64(self.base)], dtype=torch.int64, device=device)

    @property
    def draws(self) -> torch.Tensor:
        """The number of keys drawn so far, as a device tensor (int64 arithmetic wraps as the key's does)."""
        return (self.key - _as_int64(self.base)).view(())

    def next(self) -> torch.Tensor:
        """A fresh one-element key for the next forward pass."""
        return self.key.add_(1)

    def state_dict(self) -> dict:
        return {"draws": int(self.draws)}  # read on the host only when a checkpoint is written

    def load_state_dict(self, state: dict) -> None:
        self.key.fill_(_as_int64(self.base + state["draws"]))


def _as_int64(value: int) -> int:
    """``value`` modulo 2**64 as a signed 64-bit integer: the key an int64 tensor holds after the same additions."""
    return (value + 2**63) % 2**64 - 2**63
