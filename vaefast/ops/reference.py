"""The pure-PyTorch specification of the fused VAE loss.

Every other backend is held to these functions by the property tests, values and gradients alike, so they are
written for clarity and exact autograd semantics, not for speed.
"""

from __future__ import annotations

import math

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


def exp_minus_one_minus(x: torch.Tensor) -> torch.Tensor:
    """e^x - 1 - x, the KL's log-variance term, accurate to float32 rounding and never negative.

    exp(x) - 1 - x cancels near 0 (the prior), where it came out slightly negative; expm1(x) - x is never negative
    but keeps only ulp(x) of absolute accuracy (40% off at x = 1e-7). Below |x| = 0.5 this is x^2 (1/2 + x/6 + ...
    + x^7/9!), whose truncation is below 2e-9 relative (the Triton kernel uses the same series, the native kernel an
    identity on its exp's argument reduction: vector_math.h), carried to x^17/19! in float64. The series is
    evaluated on ``where(small, x, 0)`` so that large x never reaches it (its gradient would be NaN under the where).
    """
    last = 19 if x.dtype == torch.float64 else 9
    small = x.abs() < 0.5
    s = torch.where(small, x, torch.zeros_like(x))
    q = torch.full_like(s, 1.0 / math.factorial(last))
    for n in range(last - 1, 1, -1):
        q = q * s + 1.0 / math.factorial(n)
    # Above, (e^(x/2))^2 - 1 - x: its autograd forms w * e^(x/2) before the second factor, finite wherever the
    # gradient is (expm1's would overflow to inf above x = 88.7 whatever the upstream weight).
    half = torch.exp(0.5 * x)
    return torch.where(small, s * s * q, half * half - 1.0 - x)


def reparameterize_kl_reference(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor,
    lo: float | None,
    hi: float | None,
    return_kl_per_dim: bool = False,
):
    """z = mu + exp(0.5*lv)*eps and kl[b] = 0.5*sum(mu^2 + expm1(lv) - lv), lv = clamp(logvar, lo, hi).

    eps has mu's shape, or ``[K, *mu.shape]`` for K samples, and z then too (the KL does not depend on eps).

    The clamp's gradient passes on the bounds and is zero outside them (``clamp_with_inclusive_gradient``).

    Arithmetic runs in float32 (or float64 for float64 inputs), as the kernels do; z comes back in mu's dtype
    and kl in float32 (float64 for float64 inputs, which gradcheck needs).
    """
    compute_dtype = torch.float64 if mu.dtype == torch.float64 else torch.float32
    mu_c = mu.to(compute_dtype)
    lv = clamp_with_inclusive_gradient(logvar.to(compute_dtype), lo, hi)
    std = torch.exp(0.5 * lv)
    z = (mu_c + std * eps.to(compute_dtype)).to(mu.dtype)
    kl_elem = 0.5 * (mu_c * mu_c + exp_minus_one_minus(lv))
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


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """The continuous Bernoulli's log-normalizer (Loaiza-Ganem & Cunningham, 2019) at lambda = sigmoid(logits).

    ``log C(lambda) = log(2 atanh(1 - 2 lambda) / (1 - 2 lambda))``, and with ``1 - 2 sigmoid(x) = -tanh(x/2)`` this
    is ``log(x / tanh(x/2))``, even in x: ``log a - log(1 - e) + log(1 + e)`` with ``a = |x|``, ``e = exp(-a)``,
    and below ``a = 0.5``, where the first two terms cancel in float32, its Taylor series
    ``log 2 + x^2/12 - 7x^4/1440 + 31x^6/90720 - 127x^8/4838400 + 73x^10/34214400`` (next term 4e-11 at 0.5; the
    usual ``log 2 + 4/3 (lambda - 1/2)^2 + 104/45 (lambda - 1/2)^4`` in lambda is its start).
    """
    a = logits.abs()
    small = a < 0.5
    safe = torch.where(small, torch.ones_like(a), a)
    direct = torch.log(safe) - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe))
    # The series on where(small, x, 0): evaluated at every x, x^10 overflows float32 past |x| ~ 4e5 and the
    # unused branch would turn torch.where's gradient into NaN.
    x_small = torch.where(small, logits, torch.zeros_like(logits))
    x2 = x_small * x_small
    taylor = math.log(2.0) + x2 * (1.0 / 12.0 + x2 * (-7.0 / 1440.0 + x2 * (31.0 / 90720.0 + x2 * (
        -127.0 / 4838400.0 + x2 * (73.0 / 34214400.0)))))
    return torch.where(small, taylor, direct)


def continuous_bernoulli_nll_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """recon[b] = sum over non-batch dims of -log ContinuousBernoulli(logits).prob(target), in float32 (float64
    for float64 inputs): the BCE-with-logits minus the log-normalizer of each element."""
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(compute_dtype)
    elem = F.binary_cross_entropy_with_logits(x, target.to(compute_dtype), reduction="none")
    return (elem - continuous_bernoulli_log_norm(x)).flatten(1).sum(1)


# ------------------------------------------------------------------------------------------- seeded noise
# The noise of reparameterize_kl(..., seed=s): element i of the latent (row-major over mu's shape) is the
# Box-Muller normal of the first two words of Philox4x32-10 with key (low, high 32 bits of s) and counter
# (low, high 32 bits of i, 0, 0). For i < 2**31 this is exactly Triton's tl.randn(s, i), so the Triton kernels
# regenerate it in the backward from (seed, index) instead of storing it; the native kernel implements the same
# integers in C++. Written with int64 torch ops so that it runs on any device and under torch.compile.

_MASK32 = 0xFFFFFFFF
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_UNIFORM_SCALE = 4.6566127342e-10  # the largest float32 below 2**-31 * (1 - 2**-24): maps to [0, 1)


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product of the constant ``a`` and uint32 values ``b`` held in int64,
    whose product can pass 2**63: formed from the two 16-bit halves of ``a``."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    hi_part, lo_part = a_hi * b, a_lo * b  # each below 2**48
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = (((hi_part & 0xFFFF) << 16) + lo_part) & _MASK32
    return hi, lo


def philox4x32_10(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor]):
    """Philox4x32 with 10 rounds (Salmon et al., SC'11; Random123's philox4x32_10) over uint32 words held in
    int64 tensors: four counter words and two key words in, four words out."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & _MASK32, (k1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def seed_words(seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two Philox key words of an int64 seed (its 64 bits, negative seeds included)."""
    seed = seed.reshape(()).to(torch.int64)
    return seed & _MASK32, (seed >> 32) & _MASK32


def _uniform(word: torch.Tensor) -> torch.Tensor:
    """A uint32 word to a float32 in [0, 1), as Triton's uint_to_uniform_float: the word read as int32, negatives
    folded by bitwise not, times the scale in float32."""
    folded = torch.where(word >= 2**31, _MASK32 - word, word)
    return folded.to(torch.float32) * _UNIFORM_SCALE


def seeded_normal(seed: torch.Tensor, shape, device=None, first_index: int = 0) -> torch.Tensor:
    """float32 standard normals of ``shape`` for Philox key ``seed``, element i drawn from counter
    ``first_index + i``."""
    numel = math.prod(shape)
    index = torch.arange(first_index, first_index + numel, dtype=torch.int64, device=device)
    zero = torch.zeros_like(index)
    k0, k1 = seed_words(seed.to(index.device))
    w0, w1, _, _ = philox4x32_10((index & _MASK32, index >> 32, zero, zero), (k0, k1))
    u1 = torch.clamp_min(_uniform(w0), 1.0e-7)
    theta = _uniform(w1) * 6.283185307179586
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)).reshape(shape)
