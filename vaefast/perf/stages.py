"""Stage labels for profiles: `torch.profiler.record_function` ranges, plus NVTX ranges on CUDA for Nsight Systems.

Labels cost a few microseconds each, so they are off unless a profile is being taken (`vaefast profile` turns
them on); while off, `stage()` is a no-op context manager.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

STAGES = ("data", "encoder", "reparam/KL", "decoder", "recon loss", "backward", "optimizer")
_enabled = False
_nvtx = False


def enable(on: bool = True, *, nvtx: bool | None = None) -> None:
    global _enabled, _nvtx
    _enabled = on
    _nvtx = torch.cuda.is_available() if nvtx is None else nvtx


@contextmanager
def _labelled(name: str):
    if _nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if _nvtx:
            torch.cuda.nvtx.range_pop()


def stage(name: str):
    """A labelled range while profiling, else nothing."""
    return _labelled(name) if _enabled else nullcontext()
