"""The public functional API of the fused VAE loss."""

from __future__ import annotations

import torch

from .backends import FUSED_DTYPES
from .dispatch import select
from .reference import (bce_with_logits_reference, continuous_bernoulli_nll_reference, reparameterize_kl_reference,
                        seeded_normal)
from .validation import (check_bce_inputs, check_latent_inputs, check_samples, check_tensor, resolve_clamp,
                         sample_shape, seed_tensor)

DEFAULT_CLAMP = (-10.0, 10.0)


def reparameterize_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor | None = None,
    *,
    seed: int | torch.Tensor | None = None,
    samples: int = 1,
    clamp: tuple[float, float] | None = DEFAULT_CLAMP,
    backend: str = "auto",
    return_kl_per_dim: bool = False,
):
    """Reparameterized sample and KL to N(0, I) in one fused pass.

    With ``lv = clamp(logvar, *clamp)``: ``z = mu + exp(0.5*lv) * eps`` and
    ``kl[b] = 0.5 * sum over non-batch dims of (mu**2 + exp(lv) - 1 - lv)``.

    Args:
        mu, logvar: ``[B, ...]`` posterior mean and log-variance, flat ``[B, D]`` or spatial ``[B, C, H, W]``.
        eps: standard normal noise of the same shape. It takes no gradient. When both eps and seed are None it is
            drawn with ``torch.randn_like(mu)``.
        seed: draw the noise inside the kernel instead, from Philox4x32-10 keyed by ``seed`` (a Python int, or an
            int64 tensor of one element on mu's device, which torch.compile and CUDA graphs read afresh on every
            call) and counted by the element index, and regenerate it in the backward: the native and Triton
            kernels allocate and save no eps tensor (the torch reference materializes it). The same seed gives the
            same Philox integers and uniforms on every backend, and normals within 2e-6 of
            ``reference.seeded_normal`` (the transforms differ in their float32 rounding).
        clamp: ``(lo, hi)`` bounds for logvar, or None for no clamp. The clamp's gradient
            passes on the bounds and is zero outside them, whatever the installed torch's ``torch.clamp`` does.
        samples: K > 1 draws K samples from one read of mu and logvar: z is ``[K, B, ...]`` (eps, when given, too;
            seeded noise counts the elements of ``[K, B, ...]``), the KL, analytic, is the same for every sample, and
            the backward sums the samples' gradients. For importance-weighted bounds (IWAE, DReG).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"native"``.
        return_kl_per_dim: also return the KL summed over the batch per latent element (shape
            ``mu.shape[1:]``), computed in the same pass, for active-unit monitoring and free bits.

    Returns:
        ``(z, kl)`` or ``(z, kl, kl_per_dim)``; z has mu's dtype, the KL terms are float32.
    """
    check_tensor("mu", mu)
    samples = check_samples(samples)
    if seed is not None:
        if eps is not None:
            raise ValueError("pass eps or seed, not both: with a seed the noise is drawn inside the kernel")
        seed = seed_tensor(seed, mu.device)
    elif eps is None:
        eps = torch.randn_like(mu) if samples == 1 else mu.new_empty(sample_shape(mu, samples)).normal_()
    check_latent_inputs(mu, logvar, eps, samples)
    if eps is not None and eps.requires_grad:
        raise ValueError("eps requires grad, but reparameterize_kl does not differentiate with respect to eps; "
                         "pass eps.detach()")
    lo, hi = resolve_clamp(clamp)
    ops = select(backend, mu.device, mu.dtype)
    if ops is None:
        if eps is None:
            eps = seeded_normal(seed, sample_shape(mu, samples), mu.device)
        bounds = (None, None) if clamp is None else (lo, hi)
        return reparameterize_kl_reference(mu, logvar, eps, *bounds, return_kl_per_dim=return_kl_per_dim)
    seeded = eps is None
    z, kl, kl_per_dim = ops.latent(mu, logvar, seed if seeded else eps, lo, hi, return_kl_per_dim, seeded, samples)
    return (z, kl, kl_per_dim) if return_kl_per_dim else (z, kl)


def bce_with_logits(logits: torch.Tensor, target: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Per-sample BCE-with-logits: ``recon[b] = sum over non-batch dims of BCE(logits, target)``, float32 [B].

    ``target`` is in [0, 1] (grayscale intensities as well as binary values), may have its own float dtype, and
    takes no gradient. The gradient with respect to the logits is ``sigmoid(logits) - target``.
    """
    return _pixel_nll(logits, target, backend, continuous=False)


def continuous_bernoulli_nll(logits: torch.Tensor, target: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Per-sample negative log-likelihood of the continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019), float32 [B]:
    ``recon[b] = sum over non-batch dims of BCE(logits, target) - log C(sigmoid(logits))``, the normalized density
    on [0, 1] of ``torch.distributions.ContinuousBernoulli(logits=...)``, computed in the BCE pass.

    Arguments as in ``bce_with_logits``; the log-normalizer uses its Taylor series near logit 0 (lambda = 1/2).
    """
    return _pixel_nll(logits, target, backend, continuous=True)


def _pixel_nll(logits, target, backend: str, *, continuous: bool) -> torch.Tensor:
    """The BCE pass, with the continuous Bernoulli's log-normalizer when ``continuous``."""
    check_bce_inputs(logits, target)
    ops = select(backend, logits.device, logits.dtype)
    if ops is None:
        reference = continuous_bernoulli_nll_reference if continuous else bce_with_logits_reference
        return reference(logits, target)
    if target.dtype not in FUSED_DTYPES:
        target = target.float()
    return ops.bce(logits, target, continuous)
