"""The step's scalar inputs besides the batch, as device tensors: the loss scale and the extra terms' weights.

Tensors, not floats: torch.compile would specialize on (and recompile for) each new Python float, a per-step
host-to-device copy would wait for the stream, and a captured step would freeze the value.
"""

from __future__ import annotations

import torch

from ..models.loss_terms import LossTerm
from .distributed import DistContext


class StepInputs:
    def __init__(self, loss_terms: list[LossTerm], dist: DistContext, device: torch.device):
        self.loss_terms, self.dist, self.device = list(loss_terms), dist, device
        self._scales: dict[int, torch.Tensor] = {}  # per batch size, and kept: a captured step holds on to it
        self._weights_value, self.term_weights = None, None

    def loss_scale(self, local_count: int) -> torch.Tensor:
        """world_size / global batch size. One process needs no collective, and the tensor is reused while the batch
        size stays the same."""
        if self.dist.enabled:
            # From pinned memory without blocking: a plain host-to-device copy would wait for the CUDA stream.
            local = torch.tensor([float(local_count)], pin_memory=self.device.type == "cuda")
            count = self.dist.all_reduce_(local.to(self.device, non_blocking=True))
            return self.dist.world_size / count.clamp_min(1.0)
        if local_count not in self._scales:
            self._scales[local_count] = torch.tensor(1.0 / max(local_count, 1), device=self.device)
        return self._scales[local_count]

    def update_term_weights(self, step: int) -> torch.Tensor | None:
        """The extra terms' weights at ``step``, in one device tensor written in place (a captured step reads that
        tensor) and only when a weight changes."""
        weights = tuple(term.weight_at(step) for term in self.loss_terms)
        if weights and weights != self._weights_value:
            if self.term_weights is None:
                self.term_weights = torch.tensor(weights, device=self.device)
            else:
                self.term_weights.copy_(torch.tensor(weights), non_blocking=True)
            self._weights_value = weights
        return self.term_weights
