"""Backend selection, done in Python before any custom op or autograd Function is applied.

Liger-Kernel PR #1396 showed why: a Function that picks another Function inside its forward silently drops
gradients. Here the functional API asks ``select`` for a backend's ops and only then calls them.
"""

from __future__ import annotations

import torch

from .backends import loaded_ops, resolve
from .library import FusedOps

_SELECTED: dict[tuple, str] = {}


def select(backend: str, device: torch.device, dtype: torch.dtype) -> FusedOps | None:
    """The fused ops to call, or None for the PyTorch reference. Raises BackendUnavailable with the reason."""
    if torch.compiler.is_compiling():
        # Imported here, not at the top: marking a function for dynamo imports torch._dynamo, which would
        # triple the cost of `import vaefast` for eager users. While compiling, dynamo is loaded already.
        from .compile_time import resolve_constant

        name = resolve_constant(backend, device, dtype)
    else:
        # Eager calls repeat the same few (backend, device, dtype) triples: remember the answers.
        key = (backend, device, dtype)
        name = _SELECTED.get(key)
        if name is None:
            name = _SELECTED[key] = resolve(backend, device, dtype)
    return None if name == "torch" else loaded_ops(name)
