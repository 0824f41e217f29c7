"""Keep freed memory in the process (glibc malloc), so large tensors reuse mapped pages instead of faulting new ones.

glibc serves a large allocation with a fresh mmap or returns freed heap memory to the kernel once more than a
threshold is free; the next tensor of that size then page-faults every page in again (the kernel zeroes each one).
A fused op that writes 4 MB outputs each step paid ~0.1-0.2 ms per step for that on this machine, and its timings
spread by +-20% with the allocator's state (benchmarks/README.md). PyTorch's CPU tuning guide answers the same with
jemalloc or tcmalloc through LD_PRELOAD; this sets glibc's own knobs in-process instead, the equivalent of the
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` environment variables.

It changes the whole process (freed memory up to ``trim_threshold`` stays mapped), so the library never calls it
on import: the benchmarks apply it to every variant they time, and a training script may opt in.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above HEAP_MAX_SIZE / 2, which is 32 MiB on 64-bit builds.
MAX_MMAP_THRESHOLD = 32 << 20


def keep_freed_memory(mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = 1 << 30) -> bool:
    """Serve allocations below ``mmap_threshold`` bytes from the heap and keep up to ``trim_threshold`` bytes of
    freed heap mapped. Returns False (and changes nothing) where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if not 0 < mmap_threshold <= MAX_MMAP_THRESHOLD or trim_threshold < 0:
        raise ValueError(f"mmap_threshold must be in (0, {MAX_MMAP_THRESHOLD}] and trim_threshold >= 0, got "
                         f"{mmap_threshold} and {trim_threshold}")
    libc = ctypes.CDLL(None)
    # Setting either disables glibc's dynamic threshold, so both are set.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
                and libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
