"""The importance-weighted bound of Burda et al. (2016) as an estimate of -log p(x).

log p(x) >= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q(z|x)

The same path as training with ``--objective iwae``: the K samples come from the fused op
(``reparameterize_kl(..., samples=n, seed=...)``, one read of mu and logvar, seeded noise, in float32 at least) and
the log-weights from ``models.objective.importance_log_weights``, here in float64, with log q from the noise itself.
They are drawn and decoded in batches of whole samples-per-image, so K = 1000+ is practical on CPU, and combined
with logsumexp.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from ..models.objective import importance_log_weights
from ..ops import reparameterize_kl
from ..ops.reference import seeded_normal


@torch.no_grad()
def iwae_log_likelihood(model, x: torch.Tensor, k: int, *, max_decode_batch: int = 4096, autocast=None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """log p(x) estimates, float64 [B], from K importance samples per image (K = 1 gives the one-sample ELBO).
    ``generator`` (CPU) draws the noise keys, for reproducible estimates."""
    if k < 1:
        raise ValueError(f"the number of importance samples must be >= 1, got {k}")
    with autocast or nullcontext():  # the encoder too: a bf16 model (master weights) takes bf16 inputs only so
        mu, logvar = model.encode(x)
    # The samples drawn in float32 at least (a bf16 z would be rounded to 8 bits of mantissa), and log q's value
    # from the noise itself, regenerated from its key (see importance_log_weights).
    mu, logvar = mu.to(torch.promote_types(mu.dtype, torch.float32)), logvar.to(
        torch.promote_types(logvar.dtype, torch.float32))
    batch = x.shape[0]
    log_w = torch.empty(batch, k, dtype=torch.float64, device=x.device)
    per_pass = max(1, max_decode_batch // batch)  # importance samples decoded together for the whole batch
    for start in range(0, k, per_pass):
        n = min(per_pass, k - start)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        z, _ = reparameterize_kl(mu, logvar, seed=seed, samples=n, clamp=model.clamp, backend=model.backend)
        z = z if n > 1 else z[None]  # [n, B, ...]
        with autocast or nullcontext():
            decoded = model.decode(z.flatten(0, 1))
            nll = model.nll(decoded, x.expand(n, *x.shape).flatten(0, 1))
        noise = seeded_normal(torch.tensor(seed), z.shape, device=z.device)
        log_w[:, start:start + n] = importance_log_weights(nll.view(n, batch).double(), z.double(), mu.double(),
                                                           logvar.double(), model.clamp, noise=noise).T
    return torch.logsumexp(log_w, dim=1) - math.log(k)
