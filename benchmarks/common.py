"""What every benchmark shares: machine description, result files, and the README tables."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        return __import__(module).__version__
    except Exception:  # an optional package that is absent or broken is reported as missing
        return None


def machine_info(device: torch.device | str = "cpu") -> dict:
    import vaefast
    from vaefast.ops import native_backend

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
        "vaefast": vaefast.__version__,
        "native_isa": native_backend.isa() if native_backend.load_error() is None else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    return info


def write_result(name: str, payload: dict, *, quick: bool = False) -> Path:
    folder = RESULTS / "quick" if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def update_readme_section(name: str, payload: dict, table: str) -> None:
    """Replace (or append) the README section between this benchmark's markers."""
    m = payload["machine"]
    header = (
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads)"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f"; torch {m['torch']}, triton {m['triton']}, native ISA {m['native_isa']}.  \n"
        f"Command: `{payload['command']}`  \nDate: {m['date']}  \nJSON: `benchmarks/results/{name}.json`"
    )
    block = f"<!-- {name}:start -->\n### {name}\n\n{header}\n\n{table}\n<!-- {name}:end -->"
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text)
