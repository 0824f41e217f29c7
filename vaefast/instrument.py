"""The instrumentation that models and the trainer use, below both: stage labels and peak memory.

Stage labels are `torch.profiler.record_function` ranges, plus NVTX ranges on CUDA for Nsight Systems. They cost a
few microseconds each, so they are off unless a profile is being taken (`vaefast profile` turns them on); while
off, `stage()` is a no-op context manager. The tools that drive a Trainer (benchmarks, the profiler) live above,
in vaefast.perf.
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


def peak_memory_mb(device: torch.device | str) -> float:
    """The run's peak memory: CUDA memory allocated by torch on a GPU, the process's peak resident set on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB
