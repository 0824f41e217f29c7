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
    }
    return info
