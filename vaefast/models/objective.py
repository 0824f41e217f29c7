"""The training objective: the negative ELBO with KL weighting and free bits, or with K posterior samples the
K-sample ELBO or the importance-weighted bound (IWAE, Burda et al. 2016) with the standard or the doubly
reparameterized gradient (DReG, Tucker et al. 2018); shared by the trainer and eval."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..config import ObjectiveConfig
from ..ops.reference import clamp_with_inclusive_gradient
from ..instrument import stage
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




def importance_log_weights(nll: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, clamp,
                           *, kl_weight=1.0, stop_q_gradient: bool = False) -> torch.Tensor:
    """``log w_k = log p(x|z_k) + kl_weight * (log p(z_k) - log q(z_k|x))``, [K, B], for K samples ``z`` [K, B, ...]
    of q = N(mu, exp(lv)), lv = clamp(logvar) as the fused op clamps it, with ``nll`` [K, B] = -log p(x|z_k).

    log q is evaluated at the z the decoder saw, from (z - mu) / std, in float32, and in float64 when ``nll`` or the
    posterior is float64 (the likelihoods sum each image's terms in float64: a large image's log-likelihood, of
    order 1e6 nats, would otherwise step by 0.06 in float32).
    ``stop_q_gradient``: q's parameters enter log q detached, so that the gradient reaches the encoder through z
    alone (DReG); otherwise autograd gives the reparameterized total derivative.
    """
    dtype = torch.float64 if torch.float64 in (mu.dtype, nll.dtype) else torch.float32
    lv = logvar.to(dtype) if clamp is None else clamp_with_inclusive_gradient(logvar.to(dtype), *clamp)
    mu = mu.to(dtype)
    if stop_q_gradient:
        mu, lv = mu.detach(), lv.detach()
    z = z.to(dtype)
    eps = (z - mu) * torch.exp(-0.5 * lv)
    latent_dims = tuple(range(2, z.dim()))
    # log p(z) - log q(z|x) with the two Σ ½ log 2π cancelled analytically rather than added and subtracted.
    log_ratio = (0.5 * (eps * eps - z * z + lv)).sum(latent_dims)
    return -nll.to(dtype) + kl_weight * log_ratio


class ObjectiveOutput(NamedTuple):
    """The loss (this rank's share of the global mean) and, detached, what metrics read: the NLL (averaged over
    the samples) and KL sums, the per-dim KL, and the extra terms' sums (None without terms)."""

    loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor
    term_sums: torch.Tensor | None


def _scale_gradient(z: torch.Tensor, weights: torch.Tensor, kl_weight) -> None:
    """DReG (Tucker et al., 2018) for a bound whose log p(z) - log q(z|x) is weighted by β (the KL weight): the
    score-function part of the encoder's gradient, -β Σ_k w~_k ∂_φ log q(z_k), equals in expectation
    -β Σ_k w~_k (1 - w~_k) ∂_z log w_k · ∂z_k/∂φ, so the pathwise gradient through sample k carries
    w~_k (1 - β + β w~_k): w~_k squared at β = 1. The gradient that reaches z from the bound already carries w~_k;
    it is multiplied here by (1 - β + β w~_k), with β the step's device tensor (no host read)."""
    beta = torch.as_tensor(kl_weight, dtype=z.dtype, device=z.device)
    factor = (1.0 - beta) + beta * weights.detach().to(z.dtype)
    factor = factor.view(*weights.shape, *([1] * (z.dim() - 2)))
    z.register_hook(lambda grad: grad * factor)


class NegativeELBO(nn.Module):
    """The model and its loss as one module, so that DDP wraps (and synchronizes) every parameter the loss uses,
    the likelihood's learned scale included."""

    def __init__(self, model: nn.Module, free_bits: float = 0.0, loss_terms: list[LossTerm] | None = None, *,
                 samples: int = 1, objective: str = "elbo", estimator: str = "standard"):
        super().__init__()
        # The objective section's own checks, so that this module and `vaefast train` refuse alike.
        ObjectiveConfig(free_bits=free_bits, samples=samples, objective=objective, estimator=estimator)
        if samples > 1 and loss_terms:
            raise ValueError("extra loss terms take one reconstruction per image: use samples=1 with them")
        self.model, self.free_bits = model, free_bits
        self.samples, self.objective, self.estimator = samples, objective, estimator
        self.loss_terms = nn.ModuleList(check_loss_terms(loss_terms))

    @property
    def metric_names(self) -> list[str]:
        """What ``term_sums`` holds, in order: the extra terms' names."""
        return [term.name for term in self.loss_terms]

    def terms(self, x: torch.Tensor, noise_seed: torch.Tensor | None = None) -> tuple[torch.Tensor, VAEOutput]:
        """The per-image reconstruction NLL ([B], or [K, B] for K samples) and the model's output (z, KL per image
        and per dim, ...); ``noise_seed``: the key of the fused op's seeded noise (None: torch.randn_like)."""
        out = self.model(x, seed=noise_seed, samples=self.samples)
        with stage("recon loss"):
            if self.samples == 1:
                return self.model.nll(out.decoded, x), out
            images = x.expand(self.samples, *x.shape).flatten(0, 1)
            return self.model.nll(out.decoded, images).view(self.samples, x.shape[0]), out

    def forward(self, x: torch.Tensor, kl_w: torch.Tensor, scale: torch.Tensor,
                term_weights: torch.Tensor | None = None, noise_seed: torch.Tensor | None = None):
        """``scale`` turns the local sums into this rank's share of the global mean (world_size / global count);
        ``term_weights`` holds one weight per extra loss term. With the IWAE objective the loss is the negative bound
        summed over the batch."""
        nll, out = self.terms(x, noise_seed)
        if self.objective == "iwae":
            log_w = importance_log_weights(nll, out.z, out.mu, out.logvar, self.model.clamp, kl_weight=kl_w,
                                           stop_q_gradient=self.estimator == "dreg")
            if self.estimator == "dreg":
                _scale_gradient(out.z, torch.softmax(log_w.detach(), dim=0), kl_w)
            total = -(torch.logsumexp(log_w, dim=0) - math.log(self.samples)).sum()
            nll_sum = nll.mean(0).sum()
        else:
            nll_sum = nll.mean(0).sum() if self.samples > 1 else nll.sum()
            total = nll_sum + kl_w * kl_objective(out.kl, out.kl_per_dim, x.shape[0], self.free_bits)
        term_sums = None
        if len(self.loss_terms):
            with stage("extra loss terms"):
                reconstruction = self.model.likelihood.mean(out.decoded)
                term_sums = torch.stack([per_image(term, term(x, reconstruction, out), x.shape[0]).sum()
                                         for term in self.loss_terms])
                total = total + (term_weights * term_sums).sum()
                term_sums = term_sums.detach().float()
        return ObjectiveOutput(total * scale, nll_sum.detach(), out.kl.sum().detach(), out.kl_per_dim.detach(),
                               term_sums)
