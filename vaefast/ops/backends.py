"""Backend resolution: which backends can run where, and which one a call gets (``resolve``).

The one home of that decision, imported both by the eager dispatch (vaefast.ops.dispatch) and by the constant that
torch.compile bakes into a graph (vaefast.ops.compile_time).
"""

from __future__ import annotations

import importlib
import warnings
from functools import lru_cache

import torch

from .library import FusedOps, register_backend

BACKENDS = ("torch", "triton", "native")
# The fused kernels compute in float32; float64 is left to the reference, which keeps it exact.
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


_LOADED: dict[str, FusedOps] = {}


@lru_cache(maxsize=None)
def _load(name: str) -> FusedOps | str:
    """The backend's registered ops, or the reason it cannot be loaded. Loaded once per process."""
    ops = _register(name)
    if isinstance(ops, FusedOps):
        _LOADED[name] = ops
    return ops


def _register(name: str) -> FusedOps | str:
    if name == "triton":
        try:
            module = importlib.import_module("vaefast.ops.triton_backend")
        except ImportError as exc:
            return f"triton is not importable ({exc}); install it with `pip install triton`"
    else:
        from . import native_backend as module

        reason = module.load_error()
        if reason is not None:
            return reason
    return register_backend(
        name, module.latent_forward, module.latent_backward, module.bce_forward, module.bce_backward
    )


def _triton_runs_on(device: torch.device) -> str | None:
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        from . import triton_backend

        if type(triton_backend.latent_fwd_kernel).__name__ == "InterpretedFunction":
            return None
        return (
            "the triton backend runs on CPU tensors only under the Triton interpreter: set TRITON_INTERPRET=1 "
            "before triton is imported, or use backend='native' / 'torch' on CPU"
        )
    return f"the triton backend supports CUDA tensors (and CPU under TRITON_INTERPRET=1), not {device.type}"


def unavailable_reason(name: str, device: torch.device | str = "cpu") -> str | None:
    """None if backend ``name`` can run on ``device``, otherwise the reason it cannot."""
    device = torch.device(device)
    if name == "torch":
        return None
    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or 'auto'"
    loaded = _load(name)
    if isinstance(loaded, str):
        return loaded
    if name == "triton":
        return _triton_runs_on(device)
    if device.type != "cpu":
        return f"the native backend runs on CPU tensors, not {device.type}"
    return None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device``."""
    return [name for name in BACKENDS if unavailable_reason(name, device) is None]


def unavailable_backends(device: torch.device | str = "cpu") -> dict[str, str]:
    """The backends that cannot run on ``device``, each mapped to the reason."""
    reasons = {name: unavailable_reason(name, device) for name in BACKENDS}
    return {name: reason for name, reason in reasons.items() if reason is not None}


def loaded_ops(name: str) -> FusedOps:
    """The registered ops of a backend that ``resolve`` returned."""
    return _LOADED[name]


_warned_fallbacks: set[str] = set()


def _auto(device: torch.device, dtype: torch.dtype) -> str:
    if dtype not in FUSED_DTYPES:
        return "torch"
    preferred = {"cuda": "triton", "cpu": "native"}.get(device.type)
    if preferred is None:
        return "torch"
    reason = unavailable_reason(preferred, device)
    if reason is None:
        return preferred
    if preferred not in _warned_fallbacks:
        _warned_fallbacks.add(preferred)
        warnings.warn(
            f"vaefast: the {preferred} backend is unavailable on {device.type}, so backend='auto' falls back to "
            f"the PyTorch reference (slower, same results). Reason: {reason}",
            RuntimeWarning,
            stacklevel=5,  # the caller of reparameterize_kl / bce_with_logits
        )
    return "torch"


def resolve(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The name of the backend that will run; raises BackendUnavailable with the reason."""
    name = _auto(device, dtype) if backend == "auto" else backend
    if name == "torch":
        return name
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise BackendUnavailable(f"backend={name!r} is unavailable: {reason}")
    if dtype not in FUSED_DTYPES:
        raise BackendUnavailable(
            f"backend={name!r} computes in float32 and takes float32, bfloat16 or float16 inputs, not {dtype}; "
            "use backend='torch' (or 'auto') for float64"
        )
    return name


