"""``FusedVAELoss``: the drop-in nn.Module over the functional ops."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .functional import DEFAULT_CLAMP, bce_with_logits, reparameterize_kl

REDUCTIONS = ("mean", "sum", "none")


class VAELossOutput(NamedTuple):
    """The loss to backpropagate and its parts, reduced the same way, for logging."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


class FusedVAELoss(nn.Module):
    """Negative ELBO with a Bernoulli (BCE-with-logits) likelihood: ``recon + beta * kl``.

    Adopting it takes three changed lines in a classic VAE::

        z, kl = criterion.reparameterize(mu, logvar)       # was: z = self.reparameterize(mu, logvar)
        logits = self.decode(z)                            # was: torch.sigmoid(...) in the decoder
        loss = criterion(logits, x, kl).loss               # was: loss_function(recon, x, mu, logvar)
    """

    def __init__(
        self,
        beta: float = 1.0,
        clamp: tuple[float, float] | None = DEFAULT_CLAMP,
        reduction: str = "mean",
        backend: str = "auto",
    ):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.beta = float(beta)
        self.clamp = clamp
        self.reduction = reduction
        self.backend = backend

    def reparameterize(self, mu, logvar, eps=None, *, seed=None, return_kl_per_dim: bool = False):
        """``reparameterize_kl`` with this loss's clamp and backend: ``(z, kl[, kl_per_dim])``; ``seed`` draws the
        noise inside the kernel (see reparameterize_kl)."""
        return reparameterize_kl(
            mu, logvar, eps, seed=seed, clamp=self.clamp, backend=self.backend, return_kl_per_dim=return_kl_per_dim
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor, kl: torch.Tensor) -> VAELossOutput:
        recon = bce_with_logits(logits, target, backend=self.backend)
        if kl.shape != recon.shape:
            raise ValueError(
                f"kl has shape {tuple(kl.shape)} but the batch gives recon shape {tuple(recon.shape)}: pass the "
                "per-sample kl returned by reparameterize_kl for the same batch"
            )
        per_sample = recon + self.beta * kl
        if self.reduction == "none":
            return VAELossOutput(per_sample, recon, kl)
        reduce = torch.mean if self.reduction == "mean" else torch.sum
        return VAELossOutput(reduce(per_sample), reduce(recon), reduce(kl))

    def extra_repr(self) -> str:
        return f"beta={self.beta}, clamp={self.clamp}, reduction={self.reduction!r}, backend={self.backend!r}"
