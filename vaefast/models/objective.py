"""The training objective: the negative ELBO with KL weighting and free bits, shared by the trainer and eval."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.reference import clamp_with_inclusive_gradient
from ..perf.stages import stage
from .loss_terms import LossTerm, check_loss_terms, per_image
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

    def __init__(self, model: nn.Module, free_bits: float = 0.0, loss_terms: list[LossTerm] | None = None):
        super().__init__()
        self.model, self.free_bits = model, free_bits
        self.loss_terms = nn.ModuleList(check_loss_terms(loss_terms))

    def terms(self, x: torch.Tensor, noise_seed: torch.Tensor | None = None) -> tuple[torch.Tensor, VAEOutput]:
        """The per-image reconstruction NLL [B] and the model's output (z, KL per image and per dim, ...);
        ``noise_seed``: the key of the fused op's seeded noise (None: torch.randn_like)."""
        out = self.model(x, seed=noise_seed)
        with stage("recon loss"):
            nll = self.model.nll(out.decoded, x)
        return nll, out

    def forward(self, x: torch.Tensor, kl_w: torch.Tensor, scale: torch.Tensor,
                term_weights: torch.Tensor | None = None, noise_seed: torch.Tensor | None = None):
        """``scale`` turns the local sums into this rank's share of the global mean (world_size / global count);
        ``term_weights`` holds one weight per extra loss term. Returns the loss and, detached, the NLL and KL sums,
        the per-dim KL and the extra terms' sums (None without terms)."""
        nll, out = self.terms(x, noise_seed)
        nll_sum = nll.sum()
        total = nll_sum + kl_w * kl_objective(out.kl, out.kl_per_dim, x.shape[0], self.free_bits)
        term_sums = None
        if len(self.loss_terms):
            with stage("extra loss terms"):
                reconstruction = self.model.likelihood.mean(out.decoded)
                term_sums = torch.stack([per_image(term, term(x, reconstruction, out), x.shape[0]).sum()
                                         for term in self.loss_terms])
                total = total + (term_weights * term_sums).sum()
                term_sums = term_sums.detach().float()
        return total * scale, nll_sum.detach(), out.kl.sum().detach(), out.kl_per_dim.detach(), term_sums
