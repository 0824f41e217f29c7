"""The pure-PyTorch specification of the fused VAE loss.

Every other backend is held to these functions by the property tests, values and gradients alike, so they are
written for clarity and exact autograd semantics, not for speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clamp_with_inclusive_gradient(x: torch.Tensor, lo: float | None, hi: float | None) -> torch.Tensor:
    """``clamp(x, lo, hi)`` whose gradient is 1 where ``lo <= x <= hi``, bounds included, and 0 elsewhere (NaN too).

    The rule is stated here rather than inherited from ``torch.clamp``, whose gradient at the bounds changed in
    torch 2.14 (1 before, 0 after). Inclusive is chosen because a value sitting exactly on a bound (a saturated
    encoder) then still gets the gradient that can move it back inside; it is also the mask every fused kernel
    computes (``clamped == x``).
    """
    if lo is None and hi is None:
        return x
    clamped = torch.clamp(x, lo, hi)
    return torch.where(clamped == x, x, clamped.detach())


def reparameterize_kl_reference(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor,
    lo: float | None,
    hi: float | None,
    return_kl_per_dim: bool = False,
):
    """z = mu + exp(0.5*lv)*eps and kl[b] = 0.5*sum(mu^2 + exp(lv) - 1 - lv), lv = clamp(logvar, lo, hi).

    The clamp's gradient passes on the bounds and is zero outside them (``clamp_with_inclusive_gradient``).

    Arithmetic runs in float32 (or float64 for float64 inputs), as the kernels do; z comes back in mu's dtype
    and kl in float32 (float64 for float64 inputs, which gradcheck needs).
    """
    compute_dtype = torch.float64 if mu.dtype == torch.float64 else torch.float32
    mu_c = mu.to(compute_dtype)
    lv = clamp_with_inclusive_gradient(logvar.to(compute_dtype), lo, hi)
    std = torch.exp(0.5 * lv)
    z = (mu_c + std * eps.to(compute_dtype)).to(mu.dtype)
    kl_elem = 0.5 * (mu_c * mu_c + std * std - 1.0 - lv)
    kl = kl_elem.flatten(1).sum(1)
    if return_kl_per_dim:
        return z, kl, kl_elem.sum(0)
    return z, kl


def bce_with_logits_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """recon[b] = sum over non-batch dims of the elementwise BCE-with-logits, computed in float32.

    Written through F.binary_cross_entropy_with_logits, whose autograd formula gives the exact derivative
    sigmoid(x) - t, including 0.5 - t at x == 0.
    """
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    elem = F.binary_cross_entropy_with_logits(
        logits.to(compute_dtype), target.to(compute_dtype), reduction="none"
    )
    return elem.flatten(1).sum(1)
