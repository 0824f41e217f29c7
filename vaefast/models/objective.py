"""The training objective: the negative ELBO with KL weighting and free bits, shared by the trainer and eval."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.reference import clamp_with_inclusive_gradient
from ..perf.stages import stage
from .vae import VAEOutput


def kl_objective(kl: torch.Tensor, kl_per_dim: torch.Tensor, batch_size: int, free_bits: float) -> torch.Tensor:
    """The KL summed over the batch as the loss sees it.

    With free bits (Kingma et al., 2016) each latent dimension's batch-mean KL is floored at ``free_bits`` nats,
    so the optimizer gains nothing by pushing a dimension below it; the per-dim KL comes from the fused op.
    """
    if free_bits <= 0:
        return kl.sum()
    floored = clamp_with_inclusive_gradient(kl_per_dim / max(batch_size, 1), free_bits, None)
    return floored.sum() * batch_size


class NegativeELBO(nn.Module):
    """The model and its loss as one module, so that DDP wraps (and synchronizes) every parameter the loss uses,
    the likelihood's learned scale included."""

    def __init__(self, model: nn.Module, free_bits: float = 0.0):
        super().__init__()
        self.model, self.free_bits = model, free_bits

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, VAEOutput]:
        """The per-image reconstruction NLL [B] and the model's output (z, KL per image and per dim, ...)."""
        out = self.model(x)
        with stage("recon loss"):
            nll = self.model.nll(out.decoded, x)
        return nll, out

    def forward(self, x: torch.Tensor, kl_w: torch.Tensor, scale: torch.Tensor):
        """``scale`` turns the local sums into this rank's share of the global mean (world_size / global count).
        Returns the loss and, detached, the NLL and KL sums and the per-dim KL."""
        nll, out = self.terms(x)
        nll_sum = nll.sum()
        loss = (nll_sum + kl_w * kl_objective(out.kl, out.kl_per_dim, x.shape[0], self.free_bits)) * scale
        return loss, nll_sum.detach(), out.kl.sum().detach(), out.kl_per_dim.detach()
