"""What one forward+backward of the fused loss launches, per backend and size: Triton kernels (run under the
interpreter, so no GPU is needed) and the aten ops that compute (allocations and views excluded).

    TRITON_INTERPRET=1 python benchmarks/launch_count.py

Writes benchmarks/results/launch_count.json and a table in docs/performance.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_section, write_result  # noqa: E402

import vaefast  # noqa: E402
from vaefast.perf.launches import count_launches, fused_loss_step  # noqa: E402

CASES = [(20, 784), (512, 784), (1024, 784), (4096, 784), (512, 3 * 64 * 64)]


def main() -> dict:
    rows = []
    for latent, pixels in CASES:
        for seeded in (False, True):
            for backend in ("triton", "torch"):
                if vaefast.unavailable_backends("cpu").get(backend) is not None:
                    continue
                counts = count_launches(fused_loss_step(backend, 8, latent, pixels, seeded=seeded),
                                        triton=backend == "triton")
                rows.append({"latent": latent, "pixels": pixels, "noise": "seeded" if seeded else "eps",
                             "backend": backend, "total": counts["total"],
                             "triton_kernels": dict(counts["triton_kernels"]), "aten_ops": dict(counts["aten_ops"])})
    payload = {"benchmark": "launch_count", "command": "TRITON_INTERPRET=1 python benchmarks/launch_count.py",
               "machine": machine_info("cpu"), "rows": rows}
    path = write_result("launch_count", payload)
    lines = ["| D | pixels | noise | backend | launches | Triton kernels | aten compute ops |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        kernels = ", ".join(f"{k.removesuffix('_kernel')} {v}" for k, v in sorted(r["triton_kernels"].items()))
        aten = ", ".join(f"{k} {v}" for k, v in sorted(r["aten_ops"].items()))
        lines.append(f"| {r['latent']} | {r['pixels']} | {r['noise']} | {r['backend']} | {r['total']} | {kernels} | "
                     f"{aten} |")
    table = ("B = 8; forward and backward of `reparameterize_kl` + `bce_with_logits`. Before the per-sample sums "
             "were written directly where a row fits one program, the Triton path launched 6 at every size "
             "(4 kernels + 2 `sum`).\n\n" + "\n".join(lines))
    update_readme_section("launch_count", payload, table)
    print(table)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
