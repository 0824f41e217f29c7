"""The native CPU kernel library (C++ in ``kernels/``, built by the top-level CMakeLists.txt): found, loaded and
bound once, below everything that calls it.

The library exposes a plain C ABI over raw contiguous buffers (``kernels/vae_loss.h``, ``kernels/optimizer.h``) and
is called through ctypes, which releases the GIL for the call. Its users: the fused loss launchers
(vaefast.ops.native_backend) and the master-weight optimizer's launchers (vaefast.train.native_optim).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import torch

ABI_VERSION = 9
LIBRARY_ENV = "VAEFAST_NATIVE_LIBRARY"
_LIB_NAMES = {"linux": "libvaefast_kernels.so", "darwin": "libvaefast_kernels.dylib", "win32": "vaefast_kernels.dll"}
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _candidate_paths() -> list[Path]:
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return [Path(override)]
    name = _LIB_NAMES.get(sys.platform, "libvaefast_kernels.so")
    # In an editable install the built library sits in site-packages/vaefast, not beside the sources, and the
    # package's search locations list both folders (read from its spec: nothing is imported).
    return [Path(p) / name for p in find_spec(__name__.split(".")[0]).submodule_search_locations]


def _bind(lib: ctypes.CDLL) -> None:
    i64, f32, i32, vp = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p
    signatures = {
        "vf_abi_version": [],
        "vf_has_float16": [],
        "vf_latent_fwd": [i32, vp, vp, vp, vp, vp, vp, vp, i64, i64, i64, i64, f32, f32, i64, i32],
        "vf_latent_bwd": [i32, vp, vp, i64, vp, vp, vp, vp, vp, vp, vp, i64, i64, i64, i64, f32, f32, i64, i32],
        "vf_bce_fwd": [i32, i32, i32, vp, vp, vp, i64, i64, i32],
        "vf_bce_bwd": [i32, i32, i32, vp, i64, vp, vp, vp, i64, i64, i32],
        "vf_adam_step": [i32, i64, vp, vp, i32, vp, i32, i32, i32],
        "vf_all_finite": [i32, i64, vp, vp, i32],
        "vf_philox_words": [i64, i64, i64, vp],
        "vf_seeded_normal": [i64, i64, i64, vp],
    }
    for fn, argtypes in signatures.items():
        getattr(lib, fn).argtypes = argtypes
        getattr(lib, fn).restype = i32
    lib.vf_isa.argtypes = []
    lib.vf_isa.restype = ctypes.c_char_p
    lib.vf_copy_runs.argtypes = [ctypes.c_char_p]
    lib.vf_copy_runs.restype = i32
    lib.vf_noise_of_copy.argtypes = [ctypes.c_char_p, i64, i64, i64, vp, vp, vp]
    lib.vf_noise_of_copy.restype = i32
    lib.vf_thread_handoff_ns.argtypes = [i64]
    lib.vf_thread_handoff_ns.restype = ctypes.c_double


ISA_ENV = "VAEFAST_NATIVE_ISA"  # caps the dispatcher's choice of copy (tests/test_isa_noise.py, docs/testing.md)
ISA_COPIES = ("baseline", "x86-64-v3", "x86-64-v4")


@lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    cap = os.environ.get(ISA_ENV, "")
    if cap and cap not in ISA_COPIES:  # the library would read an unknown name as no cap at all
        raise ValueError(f"{ISA_ENV} must be one of {', '.join(ISA_COPIES)}, got {cap!r}")
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


def copies_that_run() -> list[str]:
    """The instruction-set copies of the kernels built into the library that this CPU runs, baseline first."""
    return [name for name in ISA_COPIES if library().vf_copy_runs(name.encode())]


def flushes_subnormals() -> bool:
    """Whether the native Adam step's ``flush_subnormals`` takes effect on this machine: it sets x86-64's MXCSR
    mode (kernels/optimizer_impl.cpp); elsewhere the update keeps subnormals, as torch's does."""
    return platform.machine().lower() in ("x86_64", "amd64")


def dtype_code(t: torch.Tensor) -> int:
    code = _DTYPE_CODES.get(t.dtype)
    if code is None or (code == 2 and not library().vf_has_float16()):
        raise ValueError(f"the native backend does not support dtype {t.dtype} in this build")
    return code


def check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"native kernel {what} failed with status {status}")


def threads() -> int:
    return torch.get_num_threads()
