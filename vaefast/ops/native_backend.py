"""Launchers of the native fused CPU loss kernels (the library: vaefast.native).

The torch.library registration in ``library.py`` makes these launchers custom ops, so torch.compile sees one
opaque node per kernel.
"""

from __future__ import annotations

import math

import torch

from ..native import check as _check
from ..native import dtype_code as _dtype_code
from ..native import isa, library, load_error  # noqa: F401  (the backend's own status, as dispatch asks it)
from ..native import threads as _threads
from .validation import sample_shape

def _rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``t`` [B, ...] and the distance in elements between its rows, for a tensor whose samples are each
    contiguous (a chunk of a packed [B, 2N] encoder output is); anything else is made contiguous first."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            t = t.contiguous()
            return t, math.prod(t.shape[1:])
        expected *= size
    return t, (t.stride(0) if t.shape[0] > 1 else expected)


def _noise_pointers(noise: torch.Tensor, seeded: bool) -> tuple[int | None, int | None]:
    """(eps, seed) pointers for the kernel: exactly one is set. ``noise`` is eps, or with ``seeded`` the one-element
    int64 seed, which the kernel reads itself."""
    if seeded:
        return None, noise.data_ptr()
    return noise.data_ptr(), None


def latent_forward(mu, logvar, noise, lo: float, hi: float, per_dim: bool, seeded: bool = False, samples: int = 1):
    B, N = mu.shape[0], math.prod(mu.shape[1:])
    (mu, mu_stride), (logvar, logvar_stride) = _rows(mu), _rows(logvar)
    noise = noise.contiguous()  # kept alive until the call: the kernel gets only its pointer
    eps_ptr, seed_ptr = _noise_pointers(noise, seeded)
    z = torch.empty(sample_shape(mu, samples), dtype=mu.dtype)
    kl = torch.empty(B, dtype=torch.float32)
    kl_per_dim = torch.empty(mu.shape[1:] if per_dim else (0,), dtype=torch.float32)
    status = library().vf_latent_fwd(
        _dtype_code(mu), mu.data_ptr(), logvar.data_ptr(), eps_ptr, seed_ptr, z.data_ptr(), kl.data_ptr(),
        kl_per_dim.data_ptr() if per_dim else None, B, N, mu_stride, logvar_stride, lo, hi, samples, _threads(),
    )
    _check(status, "latent forward")
    return z, kl, kl_per_dim


def latent_backward(gz, gk, gd, mu, logvar, noise, lo: float, hi: float, seeded: bool = False, samples: int = 1):
    B, N = mu.shape[0], math.prod(mu.shape[1:])
    (mu, mu_stride), (logvar, logvar_stride) = _rows(mu), _rows(logvar)
    noise, gz = noise.contiguous(), gz.to(mu.dtype).contiguous()
    eps_ptr, seed_ptr = _noise_pointers(noise, seeded)
    # gk is [B]; the gradient of kl.sum() arrives as one value expanded over it: read with stride 0, not copied.
    gk_stride = gk.stride(0) if B > 1 else 1
    gd = None if gd is None else gd.contiguous()
    dmu, dlogvar = torch.empty(mu.shape, dtype=mu.dtype), torch.empty(logvar.shape, dtype=logvar.dtype)
    status = library().vf_latent_bwd(
        _dtype_code(mu), gz.data_ptr(), gk.data_ptr(), gk_stride, None if gd is None else gd.data_ptr(),
        mu.data_ptr(), logvar.data_ptr(), eps_ptr, seed_ptr, dmu.data_ptr(), dlogvar.data_ptr(), B, N, mu_stride,
        logvar_stride, lo, hi, samples, _threads(),
    )
    _check(status, "latent backward")
    return dmu, dlogvar


def bce_forward(logits, target, continuous: bool = False):
    B, P = logits.shape[0], math.prod(logits.shape[1:])
    logits, target = logits.contiguous(), target.contiguous()
    recon = torch.empty(B, dtype=torch.float32)
    status = library().vf_bce_fwd(
        _dtype_code(logits), _dtype_code(target), int(continuous), logits.data_ptr(), target.data_ptr(),
        recon.data_ptr(), B, P, _threads(),
    )
    _check(status, "BCE forward")
    return recon


def bce_backward(g, logits, target, continuous: bool = False):
    B, P = logits.shape[0], math.prod(logits.shape[1:])
    logits, target = logits.contiguous(), target.contiguous()
    # g is [B]; the gradient of recon.sum() arrives as one value expanded over it: read with stride 0, not copied.
    g_stride = g.stride(0) if B > 1 else 1
    dx = torch.empty_like(logits)
    status = library().vf_bce_bwd(
        _dtype_code(logits), _dtype_code(target), int(continuous), g.data_ptr(), g_stride, logits.data_ptr(),
        target.data_ptr(), dx.data_ptr(), B, P, _threads(),
    )
    _check(status, "BCE backward")
    return dx


def philox_words(seed: int, first: int, n: int) -> torch.Tensor:
    """[n, 2] int64: the first two Philox4x32-10 words of elements first .. first + n of the seeded noise."""
    out = torch.empty(n, 2, dtype=torch.int32)
    _check(library().vf_philox_words(seed, first, n, out.data_ptr()), "Philox words")
    return out.to(torch.int64) & 0xFFFFFFFF


def noise_of_copy(isa: str, seed: int, first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(words [n, 2] int64, normals [n] float32) of elements first .. first + n as the instruction-set copy ``isa``
    of the kernels draws them (vectorized Philox and transform where that copy has them); ``isa`` must be one of
    ``vaefast.native.copies_that_run()``."""
    words = torch.empty(2, n, dtype=torch.int32)
    normals = torch.empty(n, dtype=torch.float32)
    status = library().vf_noise_of_copy(isa.encode(), seed, first, n, words[0].data_ptr(), words[1].data_ptr(),
                                        normals.data_ptr())
    if status == 3:
        raise ValueError(f"the {isa} copy of the native kernels was not built or does not run on this CPU")
    _check(status, "noise of a copy")
    return words.t().to(torch.int64) & 0xFFFFFFFF, normals


def seeded_normal(seed: int, first: int, n: int) -> torch.Tensor:
    """[n] float32: the native kernel's normals of elements first .. first + n of the seeded noise."""
    out = torch.empty(n, dtype=torch.float32)
    _check(library().vf_seeded_normal(seed, first, n, out.data_ptr()), "seeded normals")
    return out
