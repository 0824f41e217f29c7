"""What a benchmark result must say about the machine it ran on."""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
from pathlib import Path

import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # an optional package that is absent or broken is reported as missing
        return None


def thread_handoff_ns(round_trips: int = 5000, repeats: int = 5) -> float | None:
    """Nanoseconds per round trip of a cache line between two threads of the native kernels' OpenMP pool, the median
    of ``repeats`` runs (kernels/thread_handoff.h); None without the native library or a second CPU, or when the
    two threads turn out to share one core.

    Every multi-threaded op hands data between its threads, so this moves a CPU training step's speed: on a
    virtual machine whose two cores the host moves between sharing one last-level cache and sitting on two
    chiplets, the same build's step time moved by half while its matrix products, timed alone, barely moved
    (docs/performance.md, issue #28)."""
    from .. import native

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if native.load_error() is not None or cpus < 2:
        return None
    runs = []
    for _ in range(repeats):
        runs.append(native.library().vf_thread_handoff_ns(round_trips))
        if runs[-1] < 0:  # no second thread, or the two share a core: the kernel gave up
            return None
    return sorted(runs)[len(runs) // 2]


# Two cores sharing a last-level cache hand a cache line back and forth in around a hundred nanoseconds; across
# chiplets or sockets it takes several hundred.
SHARED_CACHE_NS = 200.0


def core_placement(before_ns: float | None, after_ns: float | None) -> str | None:
    """"shared" when both handoff measurements around a timed stretch say the two cores shared a cache, "apart"
    when both say they did not; None when they disagree (the host moved a core during it) or one is missing."""
    if before_ns is None or after_ns is None:
        return None
    if max(before_ns, after_ns) < SHARED_CACHE_NS:
        return "shared"
    if min(before_ns, after_ns) >= SHARED_CACHE_NS:
        return "apart"
    return None


def machine_info(device: torch.device | str = "cpu") -> dict:
    from importlib.metadata import version

    from .. import native

    device = torch.device(device)
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "dali": _version("nvidia.dali"),
        "vaefast": version("vaefast"),
        "native_isa": native.isa() if native.load_error() is None else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "thread_handoff_ns": thread_handoff_ns(),  # where the host had the cores when the result was taken
    }
    return info
