"""Compile the Triton kernels ahead of time for NVIDIA GPUs and read their machine code, without a GPU.

``python -m vaefast.perf.triton_inspect [--json]`` builds every kernel for sm_80 and sm_90 in fp32, bf16 and fp16,
with the 16-byte divisibility specialization the JIT applies to aligned pointers and sizes, and reports the
registers, local memory (spills) and the width of the global loads and stores from the SASS. It must run without
TRITON_INTERPRET (the interpreter replaces the JIT functions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

DTYPES = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}
ARCHS = (80, 90)
BLOCK = 1024


def kernel_specs(elem: str, block: int = BLOCK) -> dict[str, tuple[dict, dict, list[int]]]:
    """Per kernel (``name``, ``name[seeded]`` with the noise drawn in the kernel from an int64 seed, or
    ``name[continuous]`` for the continuous Bernoulli): its signature, constexprs, and the argument indices that get
    the divisibility hint."""
    BLOCK = block  # noqa: N806 - the constexpr's own name
    f32p = "*fp32"
    specs = {}
    for seeded in (False, True):
        noise = "*i64" if seeded else elem
        suffix = "[seeded]" if seeded else ""
        specs["latent_fwd_kernel" + suffix] = (
            {"mu_ptr": elem, "logvar_ptr": elem, "eps_ptr": noise, "z_ptr": elem, "kl_partial_ptr": f32p,
             "kl_dim_partial_ptr": f32p, "B": "i32", "N": "i32", "n_col_blocks": "i32", "lo": "fp32",
             "hi": "fp32", "K": "i32", "BLOCK": "constexpr", "ROWS": "constexpr", "PER_DIM": "constexpr",
             "SEEDED": "constexpr"},
            {"BLOCK": BLOCK, "ROWS": 4, "PER_DIM": True, "SEEDED": seeded},
            [0, 1, 2, 3, 4, 5, 7],
        )
        specs["latent_bwd_kernel" + suffix] = (
            {"gz_ptr": elem, "gk_ptr": f32p, "gd_ptr": f32p, "mu_ptr": elem, "logvar_ptr": elem, "eps_ptr": noise,
             "dmu_ptr": elem, "dlogvar_ptr": elem, "B": "i32", "N": "i32", "lo": "fp32", "hi": "fp32",
             "K": "i32", "BLOCK": "constexpr", "HAS_GD": "constexpr", "SEEDED": "constexpr"},
            {"BLOCK": BLOCK, "HAS_GD": True, "SEEDED": seeded},
            [0, 1, 2, 3, 4, 5, 6, 7, 9],
        )
    for continuous in (False, True):  # [continuous]: the continuous Bernoulli's log-normalizer in the same pass
        suffix = "[continuous]" if continuous else ""
        specs["bce_fwd_kernel" + suffix] = (
            {"x_ptr": elem, "t_ptr": elem, "partial_ptr": f32p, "P": "i32", "n_col_blocks": "i32",
             "BLOCK": "constexpr", "CONTINUOUS": "constexpr"},
            {"BLOCK": BLOCK, "CONTINUOUS": continuous},
            [0, 1, 2, 3],
        )
        specs["bce_bwd_kernel" + suffix] = (
            {"g_ptr": f32p, "x_ptr": elem, "t_ptr": elem, "dx_ptr": elem, "P": "i32", "BLOCK": "constexpr",
             "CONTINUOUS": "constexpr"},
            {"BLOCK": BLOCK, "CONTINUOUS": continuous},
            [0, 1, 2, 3, 4],
        )
    return specs


def _cuobjdump(*args: str) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return subprocess.run([tool, *args], check=True, capture_output=True, text=True).stdout


def inspect_kernel(name: str, dtype: str, arch: int, block: int = BLOCK, num_warps: int = 4) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..ops import triton_backend

    signature, constexprs, hinted = kernel_specs(DTYPES[dtype], block)[name]
    attrs = {(i,): [["tt.divisibility", 16]] for i in hinted}
    source = ASTSource(fn=getattr(triton_backend, name.split("[")[0]), signature=signature, constexprs=constexprs,
                       attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = _cuobjdump("--dump-resource-usage", path)
        sass = _cuobjdump("--dump-sass", path)
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    memory_ops = re.findall(r"\b((?:LDG|STG)\.E(?:\.[A-Z0-9]+)*)\b", sass)
    return {
        "kernel": name, "dtype": dtype, "arch": f"sm_{arch}", "block": block, "num_warps": num_warps,
        "registers": int(fields["REG"]), "stack": int(fields["STACK"]), "local": int(fields["LOCAL"]),
        "shared": int(fields["SHARED"]),
        "global_memory_ops": sorted(set(memory_ops)),
    }


def inspect_all() -> list[dict]:
    """Every kernel at BLOCK with the number of warps its launcher uses there."""
    from ..ops.triton_backend import _num_warps

    sizes = {"fp32": 4, "bf16": 2, "fp16": 2}
    return [inspect_kernel(name, dtype, arch, num_warps=_num_warps(BLOCK, "[seeded]" in name, sizes[dtype]))
            for name in kernel_specs("*fp32") for dtype in DTYPES for arch in ARCHS]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter cannot compile for a GPU target", file=sys.stderr)
        return 2
    report = inspect_all()
    if args.json:
        print(json.dumps(report))
    else:
        for row in report:
            print(f"{row['kernel']:<18} {row['dtype']} {row['arch']}: {row['registers']} registers, "
                  f"local {row['local']}, stack {row['stack']}, global ops {' '.join(row['global_memory_ops'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
