"""What every benchmark shares: machine description, result files, and the tables of docs/performance.md."""

from __future__ import annotations

import json
import os
import re
import resource
from pathlib import Path

import torch

from vaefast.perf.machine import machine_info  # noqa: F401  (re-exported for the scripts)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "docs" / "performance.md"  # the generated tables; benchmarks/README.md says how to run
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def write_result(name: str, payload: dict, *, quick: bool = False, folder: str | Path | None = None) -> Path:
    """benchmarks/results/NAME.json (results/quick/ for smoke runs), or FOLDER/NAME.json when given."""
    folder = Path(folder) if folder else (RESULTS / "quick" if quick else RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def update_readme_section(name: str, payload: dict, table: str) -> None:
    """Replace (or append) the docs/performance.md section between this benchmark's markers."""
    m = payload["machine"]
    header = (
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads)"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f"; torch {m['torch']}, triton {m['triton']}, native ISA {m['native_isa']}.  \n"
        f"Command: `{payload['command']}`  \nDate: {m['date']}  \nJSON: `benchmarks/results/{name}.json`"
    )
    block = f"<!-- {name}:start -->\n### {name}\n\n{header}\n\n{table}\n<!-- {name}:end -->"
    text = README.read_text() if README.exists() else "# Performance\n"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text)


def rss_mb() -> float:
    """This process's resident memory now, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_mb(device: torch.device) -> float:
    """The process's peak: CUDA's max allocated on a GPU, the peak RSS on a CPU, MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
