"""Loader and launchers of the native fused CPU kernel (C++ in ``kernels/``, built by the top-level CMakeLists.txt).

The library exposes a plain C ABI over raw contiguous buffers (``kernels/vae_loss.h``, ``kernels/optimizer.h``) and
is called through ctypes, which releases the GIL for the call. The torch.library registration in ``library.py``
makes the loss launchers custom ops, so torch.compile sees one opaque node per kernel; the optimizer launcher
serves ``vaefast.train.optim.MasterWeightAdam``.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from functools import lru_cache
from pathlib import Path

import torch

from .validation import sample_shape

ABI_VERSION = 5
LIBRARY_ENV = "VAEFAST_NATIVE_LIBRARY"
_LIB_NAMES = {"linux": "libvaefast_kernels.so", "darwin": "libvaefast_kernels.dylib", "win32": "vaefast_kernels.dll"}
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _candidate_paths() -> list[Path]:
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return [Path(override)]
    import vaefast

    name = _LIB_NAMES.get(sys.platform, "libvaefast_kernels.so")
    # In an editable install the built library sits in site-packages/vaefast, not beside the sources, and the
    # package __path__ lists both folders.
    return [Path(p) / name for p in vaefast.__path__]


def _bind(lib: ctypes.CDLL) -> None:
    i64, f32, i32, vp = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p
    signatures = {
        "vf_abi_version": [],
        "vf_has_float16": [],
        "vf_latent_fwd": [i32, vp, vp, vp, vp, vp, vp, vp, i64, i64, i64, i64, f32, f32, i64, i32],
        "vf_latent_bwd": [i32, vp, vp, i64, vp, vp, vp, vp, vp, vp, vp, i64, i64, i64, i64, f32, f32, i64, i32],
        "vf_bce_fwd": [i32, i32, i32, vp, vp, vp, i64, i64, i32],
        "vf_bce_bwd": [i32, i32, i32, vp, vp, vp, vp, i64, i64, i32],
        "vf_adam_master_step": [i32, i64, vp, vp, f32, f32, f32, f32, f32, i32, i32],
        "vf_all_finite": [i32, i64, vp, vp, i32],
        "vf_philox_words": [i64, i64, i64, vp],
        "vf_seeded_normal": [i64, i64, i64, vp],
    }
    for fn, argtypes in signatures.items():
        getattr(lib, fn).argtypes = argtypes
        getattr(lib, fn).restype = i32
    lib.vf_isa.argtypes = []
    lib.vf_isa.restype = ctypes.c_char_p


@lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    tried = []
    for path in _candidate_paths():
        if not path.is_file():
            tried.append(f"{path} (not found)")
            continue
        try:
            lib = ctypes.CDLL(str(path))
            _bind(lib)
        except (OSError, AttributeError) as exc:
            tried.append(f"{path} ({exc})")
            continue
        version = lib.vf_abi_version()
        if version != ABI_VERSION:
            tried.append(f"{path} (ABI version {version}, expected {ABI_VERSION}: rebuild with `pip install -e .`)")
            continue
        return lib, None
    return None, (
        "the native CPU kernel library could not be loaded; tried: " + "; ".join(tried)
        + ". Build it with `pip install -e .` (needs a C++17 compiler and CMake)"
    )


def load_error() -> str | None:
    """None when the library is loaded, otherwise why it is not."""
    return _load()[1]


def library() -> ctypes.CDLL:
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(reason)
    return lib


def isa() -> str:
    """The instruction-set level of the kernel copy in use, e.g. 'x86-64-v4'."""
    return library().vf_isa().decode()


def _dtype_code(t: torch.Tensor) -> int:
    code = _DTYPE_CODES.get(t.dtype)
    if code is None or (code == 2 and not library().vf_has_float16()):
        raise ValueError(f"the native backend does not support dtype {t.dtype} in this build")
    return code


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"native kernel {what} failed with status {status}")


def _threads() -> int:
    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------- launch helpers


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
    logits, target, g = logits.contiguous(), target.contiguous(), g.contiguous()
    dx = torch.empty_like(logits)
    status = library().vf_bce_bwd(
        _dtype_code(logits), _dtype_code(target), int(continuous), g.data_ptr(), logits.data_ptr(),
        target.data_ptr(), dx.data_ptr(), B, P, _threads(),
    )
    _check(status, "BCE backward")
    return dx


def philox_words(seed: int, first: int, n: int) -> torch.Tensor:
    """[n, 2] int64: the first two Philox4x32-10 words of elements first .. first + n of the seeded noise."""
    out = torch.empty(n, 2, dtype=torch.int32)
    _check(library().vf_philox_words(seed, first, n, out.data_ptr()), "Philox words")
    return out.to(torch.int64) & 0xFFFFFFFF


def seeded_normal(seed: int, first: int, n: int) -> torch.Tensor:
    """[n] float32: the native kernel's normals of elements first .. first + n of the seeded noise."""
    out = torch.empty(n, dtype=torch.float32)
    _check(library().vf_seeded_normal(seed, first, n, out.data_ptr()), "seeded normals")
    return out


def adam_master_step(masters, grads, exp_avgs, exp_avg_sqs, params, steps, *, lr: float, beta1: float,
                     beta2: float, eps: float, weight_decay: float, decoupled: bool) -> None:
    """One fused Adam/AdamW step in place over lists of tensors, in one call: float32 ``masters``/``exp_avgs``/
    ``exp_avg_sqs``, low-precision ``grads`` and ``params`` of one dtype (each param becomes its master rounded to
    that dtype), ``steps`` the step count of each tensor after this step. The caller passes contiguous CPU tensors
    whose sizes match per position (``MasterWeightAdam`` checks them)."""
    count = len(params)
    if count == 0:
        return
    meta = (ctypes.c_int64 * (6 * count))()
    factors = (ctypes.c_float * (2 * count))()
    corrections = {}
    for i, (master, grad, exp_avg, exp_avg_sq, param, step) in enumerate(
            zip(masters, grads, exp_avgs, exp_avg_sqs, params, steps)):
        meta[6 * i:6 * i + 6] = (param.numel(), master.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(),
                                 exp_avg_sq.data_ptr(), param.data_ptr())
        if step not in corrections:
            corrections[step] = (lr / (1.0 - beta1**step), 1.0 / math.sqrt(1.0 - beta2**step))
        factors[2 * i:2 * i + 2] = corrections[step]
    status = library().vf_adam_master_step(_dtype_code(params[0]), count, meta, factors, lr, beta1, beta2, eps,
                                           weight_decay, int(decoupled), _threads())
    _check(status, "Adam step")


def all_finite(tensors) -> bool:
    """Whether every element of the contiguous CPU ``tensors`` (one tensor or a list, all of one dtype) is finite:
    one read-only pass in one call."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    if not tensors:
        return True
    count = len(tensors)
    sizes = (ctypes.c_int64 * count)(*(t.numel() for t in tensors))
    data = (ctypes.c_void_p * count)(*(t.data_ptr() for t in tensors))
    result = library().vf_all_finite(_dtype_code(tensors[0]), count, sizes, data, _threads())
    if result < 0:
        _check(-result, "finiteness check")
    return result == 1
