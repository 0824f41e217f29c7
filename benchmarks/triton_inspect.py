"""Registers, spills and global load/store widths of every Triton kernel, compiled for sm_80 and sm_90 without a GPU.

    python benchmarks/triton_inspect.py      # (TRITON_INTERPRET must be unset)

Writes benchmarks/results/triton_inspect.json and the table in docs/performance.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_section, write_result  # noqa: E402

from vaefast.perf.triton_inspect import inspect_all  # noqa: E402


def main():
    report = inspect_all()
    payload = {"benchmark": "triton_inspect", "command": "python benchmarks/triton_inspect.py",
               "machine": machine_info("cpu"), "kernels": report}
    write_result("triton_inspect", payload)
    lines = ["| kernel | dtype | arch | registers/thread | local (spill) bytes | global memory instructions |",
             "|---|---|---|---|---|---|"]
    for r in report:
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['arch']} | {r['registers']} | {r['local']} | "
                     f"{', '.join(r['global_memory_ops'])} |")
    table = ("Compiled ahead of time with `triton.compile(ASTSource(...), target=GPUTarget('cuda', arch, 32))`, "
             "BLOCK=1024, 4 warps, with the 16-byte divisibility hints the JIT applies to aligned pointers and sizes; "
             "read with the `cuobjdump` bundled in the triton wheel. `LDG.E`/`STG.E` without `.128` are the "
             "per-row scalars (upstream gradient, partial sums).\n\n" + "\n".join(lines))
    update_readme_section("triton_inspect", payload, table)
    print(table)


if __name__ == "__main__":
    main()
