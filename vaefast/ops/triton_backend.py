"""Fused VAE loss as Triton kernels: kernels first, then their launchers.

The same kernels run on CUDA tensors and, under ``TRITON_INTERPRET=1``, on CPU tensors, which is how CI checks
them without a GPU. Layout: program axis 0 walks rows (the batch, up to 2**31 programs), axis 1 walks column
blocks. Per-sample sums are written as ``[B, n_col_blocks]`` partials and finished with a tiny ``sum(1)``, so
every reduction has a fixed order and the results are deterministic (no atomics). Where a row fits one program
(one column block) the partials are the sums themselves and are returned as a view: no second launch.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
import torch
from triton.language.random import pair_uniform_to_normal, philox, uint_to_uniform_float

from .validation import sample_shape

# --------------------------------------------------------------------------------------------------- kernels


@triton.jit
def _clamp_nan_preserving(x, lo, hi):
    # Comparisons rather than minimum/maximum: NaN fails both tests and passes through unchanged.
    return tl.where(x < lo, lo, tl.where(x > hi, hi, x))


@triton.jit
def _seeded_normal(seed, index):
    """``reference.seeded_normal``: Philox4x32-10 keyed by the seed at counter (index low, index high, 0, 0), then
    Box-Muller; tl.randn(seed, index) for int32 indices, and the same stream past 2**31."""
    lo_word = index.to(tl.uint32)
    zero = lo_word * 0
    w0, w1, _, _ = philox(seed, lo_word, (index >> 32).to(tl.uint32), zero, zero)
    n, _ = pair_uniform_to_normal(uint_to_uniform_float(w0), uint_to_uniform_float(w1))
    return n


@triton.jit
def _noise(eps_ptr, offs, mask, SEEDED: tl.constexpr):
    # With seeded noise eps_ptr holds the int64 seed, loaded on the device: no host read, and a new value per
    # call under CUDA graphs.
    if SEEDED:
        return _seeded_normal(tl.load(eps_ptr), offs)
    return tl.load(eps_ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _exp_minus_one_minus(x, ex):
    """e^x - 1 - x given ex = e^x, never negative: below |x| = 0.5, where e^x - 1 and x cancel, its Taylor series
    x^2 (1/2 + x/6 + ... + x^7/9!) (as the native kernel's vector_math.h)."""
    small = tl.abs(x) < 0.5
    s = tl.where(small, x, 0.0)
    q = 2.755731922398589e-6
    q = q * s + 2.480158730158730e-5
    q = q * s + 1.984126984126984e-4
    q = q * s + 1.388888888888889e-3
    q = q * s + 8.333333333333333e-3
    q = q * s + 4.166666666666667e-2
    q = q * s + 1.666666666666667e-1
    q = q * s + 0.5
    return tl.where(small, s * s * q, (ex - 1.0) - x)


@triton.jit
def latent_fwd_kernel(
    mu_ptr, logvar_ptr, eps_ptr, z_ptr, kl_partial_ptr, kl_dim_partial_ptr,
    B, N, n_col_blocks, lo, hi, K,
    BLOCK: tl.constexpr, ROWS: tl.constexpr, PER_DIM: tl.constexpr, SEEDED: tl.constexpr,
):
    # K samples z[k] = mu + std * eps[k] from one read of mu and logvar; sample k's elements lie B*N further on.
    row_block = tl.program_id(0)
    col_block = tl.program_id(1)
    cols = col_block * BLOCK + tl.arange(0, BLOCK)
    col_mask = cols < N
    dim_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(ROWS):
        row = row_block * ROWS + r
        row_ok = row < B
        mask = col_mask & ((row + tl.zeros([BLOCK], dtype=tl.int32)) < B)
        offs = row.to(tl.int64) * N + cols
        mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lv = tl.load(logvar_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lv = _clamp_nan_preserving(lv, lo, hi)
        std = tl.exp(0.5 * lv)
        for k in range(K):
            sample_offs = tl.cast(k, tl.int64) * B * N + offs
            z = mu + std * _noise(eps_ptr, sample_offs, mask, SEEDED)
            tl.store(z_ptr + sample_offs, z.to(z_ptr.dtype.element_ty), mask=mask)
        kl = tl.where(mask, 0.5 * (mu * mu + _exp_minus_one_minus(lv, std * std)), 0.0)
        tl.store(kl_partial_ptr + row.to(tl.int64) * n_col_blocks + col_block, tl.sum(kl, axis=0), mask=row_ok)
        if PER_DIM:
            dim_acc += kl
    if PER_DIM:
        tl.store(kl_dim_partial_ptr + row_block.to(tl.int64) * N + cols, dim_acc, mask=col_mask)


@triton.jit
def latent_bwd_kernel(
    gz_ptr, gk_ptr, gd_ptr, mu_ptr, logvar_ptr, eps_ptr, dmu_ptr, dlogvar_ptr,
    B, N, lo, hi, K,
    BLOCK: tl.constexpr, HAS_GD: tl.constexpr, SEEDED: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    offs = row.to(tl.int64) * N + cols
    mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    logvar = tl.load(logvar_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # Over the K samples: sum of the upstream gradients (for dmu) and of gradient times noise (for dlogvar).
    gz = tl.zeros([BLOCK], dtype=tl.float32)
    gz_eps = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(K):
        sample_offs = tl.cast(k, tl.int64) * B * N + offs
        g = tl.load(gz_ptr + sample_offs, mask=mask, other=0.0).to(tl.float32)
        gz += g
        gz_eps += g * _noise(eps_ptr, sample_offs, mask, SEEDED)
    # The KL weight of an element: its sample's upstream gradient, plus the per-dim KL's when that output is used.
    w = tl.load(gk_ptr + row)
    if HAS_GD:
        w = w + tl.load(gd_ptr + cols, mask=mask, other=0.0)
    lv = _clamp_nan_preserving(logvar, lo, hi)
    std = tl.exp(0.5 * lv)
    passes = (logvar >= lo) & (logvar <= hi)
    dmu = gz + w * mu
    # d/dlv of 0.5*w*(exp(lv) - 1) is (0.5*w*std)*std - 0.5*w: never forming std*std alone keeps it finite
    # wherever the true value is (exp(lv) overflows float32 above lv = 88.7 even when w is small).
    half_w = 0.5 * w
    dlogvar = tl.where(passes, gz_eps * (0.5 * std) + (half_w * std) * std - half_w, 0.0)
    tl.store(dmu_ptr + offs, dmu.to(dmu_ptr.dtype.element_ty), mask=mask)
    tl.store(dlogvar_ptr + offs, dlogvar.to(dlogvar_ptr.dtype.element_ty), mask=mask)


# Below this |logit| the continuous Bernoulli's log-normalizer and its derivative use their Taylor series: the
# closed forms subtract nearly equal numbers there.
CB_TAYLOR = tl.constexpr(0.5)


@triton.jit
def _cb_log_norm(x):
    """``reference.continuous_bernoulli_log_norm``: log(x / tanh(x/2)) = log a - log(1 - e) + log(1 + e), a = |x|,
    e = exp(-a); its Taylor series near 0."""
    a = tl.abs(x)
    small = a < CB_TAYLOR
    safe = tl.where(small, 1.0, a)
    e = tl.exp(-safe)
    direct = tl.log(safe) - tl.log(1.0 - e) + tl.log(1.0 + e)
    x2 = x * x
    taylor = 0.6931471805599453 + x2 * (1.0 / 12.0 + x2 * (-7.0 / 1440.0 + x2 * (31.0 / 90720.0 + x2 * (
        -127.0 / 4838400.0 + x2 * (73.0 / 34214400.0)))))
    return tl.where(small, taylor, direct)


@triton.jit
def _cb_log_norm_grad(x):
    """d log C / dx = 1/x - csch(x); its Taylor series near 0."""
    a = tl.abs(x)
    small = a < CB_TAYLOR
    safe = tl.where(small, 1.0, x)
    e = tl.exp(-tl.where(small, 1.0, a))
    csch = 2.0 * e / (1.0 - e * e)
    direct = 1.0 / safe - tl.where(safe < 0, -csch, csch)
    x2 = x * x
    taylor = x * (1.0 / 6.0 + x2 * (-7.0 / 360.0 + x2 * (31.0 / 15120.0 + x2 * (
        -127.0 / 604800.0 + x2 * (73.0 / 3421440.0)))))
    return tl.where(small, taylor, direct)


@triton.jit
def bce_fwd_kernel(x_ptr, t_ptr, partial_ptr, P, n_col_blocks, BLOCK: tl.constexpr, CONTINUOUS: tl.constexpr):
    row = tl.program_id(0)
    col_block = tl.program_id(1)
    cols = col_block * BLOCK + tl.arange(0, BLOCK)
    mask = cols < P
    offs = row.to(tl.int64) * P + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(-tl.abs(x))
    # log1p(e) = log(u) * e / (u - 1) with u = 1 + e stays accurate where e is below float32's epsilon.
    u = 1.0 + e
    u_minus_1 = u - 1.0
    log1p_e = tl.where(u_minus_1 == 0.0, e, tl.log(u) * (e / tl.where(u_minus_1 == 0.0, 1.0, u_minus_1)))
    # x (1 - t) for x > 0, -x t otherwise: max(x, 0) - x*t would be inf - inf = NaN at x = +inf.
    weight = tl.where(x > 0, 1.0 - t, -t)
    loss = tl.where(weight == 0.0, 0.0, x * weight) + log1p_e
    if CONTINUOUS:  # the continuous Bernoulli: minus its log-normalizer, in the same pass
        loss = loss - _cb_log_norm(x)
    loss = tl.where(mask, loss, 0.0)
    tl.store(partial_ptr + row.to(tl.int64) * n_col_blocks + col_block, tl.sum(loss, axis=0))


@triton.jit
def bce_bwd_kernel(g_ptr, x_ptr, t_ptr, dx_ptr, P, BLOCK: tl.constexpr, CONTINUOUS: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < P
    offs = row.to(tl.int64) * P + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + row)
    e = tl.exp(-tl.abs(x))
    sigmoid = tl.where(x >= 0, 1.0, e) / (1.0 + e)
    d = sigmoid - t
    if CONTINUOUS:
        d = d - _cb_log_norm_grad(x)
    tl.store(dx_ptr + offs, (g * d).to(dx_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------- launch helpers

MAX_BLOCK = 1024
# Rows one forward program walks: a larger value shrinks the per-dim KL partial buffer, a smaller one gives the
# GPU more programs (B=256 at D=4096 gives 4 * 64 = 256 programs).
ROWS_PER_PROGRAM = 4


def _block_size(n: int) -> int:
    return max(16, min(MAX_BLOCK, triton.next_power_of_2(n)))


def _num_warps(block: int, seeded: bool = False, element_size: int = 4) -> int:
    # Seeded noise keeps Philox's state per element: for 4-byte inputs, twice the warps at large blocks halves the
    # elements each thread holds and keeps the kernels within 64 registers (124 at 4 warps) while each thread
    # still loads 16 bytes; 2-byte inputs keep 4 warps, or their loads would narrow to 8 bytes
    # (tests/test_triton_inspect.py).
    warps = 4 if block >= 512 else (2 if block >= 128 else 1)
    return 2 * warps if seeded and block >= 512 and element_size >= 4 else warps


def _finish(partial: torch.Tensor, dim: int) -> torch.Tensor:
    """The sum of ``partial`` over ``dim``: a view when that dimension has one block (nothing to add, no launch)."""
    return partial.squeeze(dim) if partial.shape[dim] == 1 else partial.sum(dim)


def latent_forward(mu, logvar, noise, lo: float, hi: float, per_dim: bool, seeded: bool = False, samples: int = 1):
    """``noise`` is eps ([samples, B, ...] when samples > 1), or with ``seeded`` the one-element int64 seed tensor;
    z is [samples, B, ...] when samples > 1."""
    B = mu.shape[0]
    N = math.prod(mu.shape[1:])
    z = mu.new_empty(sample_shape(mu, samples))
    kl_dim_shape = mu.shape[1:] if per_dim else (0,)
    if B == 0 or N == 0:
        kl_dim = torch.zeros(kl_dim_shape, dtype=torch.float32, device=mu.device)
        return z, torch.zeros(B, dtype=torch.float32, device=mu.device), kl_dim
    mu, logvar, noise = mu.contiguous(), logvar.contiguous(), noise.contiguous()
    block = _block_size(N)
    n_col_blocks = triton.cdiv(N, block)
    n_row_blocks = triton.cdiv(B, ROWS_PER_PROGRAM)
    kl_partial = torch.empty(B, n_col_blocks, dtype=torch.float32, device=mu.device)
    kl_dim_partial = torch.empty(
        (n_row_blocks, N) if per_dim else (1,), dtype=torch.float32, device=mu.device
    )
    latent_fwd_kernel[(n_row_blocks, n_col_blocks)](
        mu, logvar, noise, z, kl_partial, kl_dim_partial, B, N, n_col_blocks, lo, hi, samples,
        BLOCK=block, ROWS=ROWS_PER_PROGRAM, PER_DIM=per_dim, SEEDED=seeded,
        num_warps=_num_warps(block, seeded, mu.element_size()),
    )
    if not per_dim:
        kl_dim = kl_dim_partial.new_zeros(0)
    else:
        kl_dim = _finish(kl_dim_partial, 0).view(kl_dim_shape)
    return z, _finish(kl_partial, 1), kl_dim


def latent_backward(gz, gk, gd, mu, logvar, noise, lo: float, hi: float, seeded: bool = False, samples: int = 1):
    B = mu.shape[0]
    dmu = torch.empty_like(mu, memory_format=torch.contiguous_format)
    dlogvar = torch.empty_like(logvar, memory_format=torch.contiguous_format)
    N = math.prod(mu.shape[1:])
    if B == 0 or N == 0:
        return dmu, dlogvar
    block = _block_size(N)
    has_gd = gd is not None
    latent_bwd_kernel[(B, triton.cdiv(N, block))](
        gz.contiguous(), gk.contiguous(), gd.contiguous() if has_gd else gk,
        mu.contiguous(), logvar.contiguous(), noise.contiguous(), dmu, dlogvar, B, N, lo, hi, samples,
        BLOCK=block, HAS_GD=has_gd, SEEDED=seeded, num_warps=_num_warps(block, seeded, mu.element_size()),
    )
    return dmu, dlogvar


def bce_forward(logits, target, continuous: bool = False):
    B = logits.shape[0]
    P = math.prod(logits.shape[1:])
    if B == 0 or P == 0:
        return torch.zeros(B, dtype=torch.float32, device=logits.device)
    block = _block_size(P)
    n_col_blocks = triton.cdiv(P, block)
    partial = torch.empty(B, n_col_blocks, dtype=torch.float32, device=logits.device)
    bce_fwd_kernel[(B, n_col_blocks)](
        logits.contiguous(), target.contiguous(), partial, P, n_col_blocks,
        BLOCK=block, CONTINUOUS=continuous, num_warps=_num_warps(block),
    )
    return _finish(partial, 1)


def bce_backward(g, logits, target, continuous: bool = False):
    dx = torch.empty_like(logits, memory_format=torch.contiguous_format)
    B = logits.shape[0]
    P = math.prod(logits.shape[1:])
    if B == 0 or P == 0:
        return dx
    block = _block_size(P)
    bce_bwd_kernel[(B, triton.cdiv(P, block))](
        g.contiguous(), logits.contiguous(), target.contiguous(), dx, P,
        BLOCK=block, CONTINUOUS=continuous, num_warps=_num_warps(block),
    )
    return dx
