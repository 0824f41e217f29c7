"""Autotune the Triton kernels over BLOCK and num_warps with `triton.autotune`, and log the chosen configs.

    python benchmarks/triton_autotune.py            # on a CUDA machine: tune, time, write JSON + a docs/performance.md table
    python benchmarks/triton_autotune.py --check    # anywhere: compile every config for sm_80/sm_90, no spills

The production launchers pick BLOCK and num_warps with a size heuristic; this script finds what the hardware
prefers. The forward kernels' per-row partial buffers are sized for the smallest BLOCK and zero-filled, so any
config's column blocks fit and the unused columns add nothing to the row sums.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

BLOCKS = (256, 512, 1024, 2048, 4096)
WARPS = (2, 4, 8)
SIZES = {"latent": (20, 512, 4096, 16384), "bce": (784, 3 * 64 * 64)}


def configs():
    import triton

    return [triton.Config({"BLOCK": b}, num_warps=w) for b in BLOCKS for w in WARPS if b // (32 * w) >= 1]


def check(out: Path | None, quick: bool = False) -> list[dict]:
    """Compile every config ahead of time for sm_80 and sm_90 (no GPU needed) and assert no spills."""
    from vaefast.perf.triton_inspect import inspect_kernel, kernel_specs

    rows = []
    for name in kernel_specs("*fp32"):
        # quick (the CPU smoke run): the largest block at 4 warps, the config likeliest to spill; tests compile
        # every kernel at the launchers' own config (tests/test_triton_inspect.py).
        for block in (BLOCKS[-1],) if quick else BLOCKS:
            for warps in (4,) if quick else WARPS:
                if block // (32 * warps) < 1:
                    continue
                for arch in (90,) if quick else (80, 90):
                    r = inspect_kernel(name, "bf16", arch, block=block, num_warps=warps)
                    assert r["local"] == 0, r
                    rows.append(r)
    print(f"compiled {len(rows)} kernel configs for sm_80/sm_90 in bf16, none spills")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "triton_autotune-check.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def wall_clock_bench(fn, quantiles=None, **_):
    """A stand-in for triton.testing.do_bench off CUDA (the interpreter smoke run): median wall time in ms."""
    import statistics
    import time

    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def tune(dtype: torch.dtype, out: Path, *, device: str = "cuda", batch: int = 256, sizes=SIZES) -> list[dict]:
    """Autotune every kernel at each size; the same code runs under TRITON_INTERPRET on CPU (--smoke)."""
    import triton
    from triton.testing import do_bench as cuda_bench

    from vaefast.ops import triton_backend as tb

    rows = []
    dev = device
    do_bench = cuda_bench if device == "cuda" else wall_clock_bench
    # The forward kernels accumulate into partial buffers that other configs leave different columns of.
    reset = {"latent_fwd_kernel": ["kl_partial_ptr"], "bce_fwd_kernel": ["partial_ptr"]}
    tuned = {name: triton.autotune(configs=configs(), key=[key], do_bench=do_bench,
                                   reset_to_zero=reset.get(name))(getattr(tb, name))
             for name, key in (("latent_fwd_kernel", "N"), ("latent_bwd_kernel", "N"), ("bce_fwd_kernel", "P"),
                               ("bce_bwd_kernel", "P"))}
    latent_fwd, latent_bwd = tuned["latent_fwd_kernel"], tuned["latent_bwd_kernel"]
    bce_fwd, bce_bwd = tuned["bce_fwd_kernel"], tuned["bce_bwd_kernel"]
    B = batch
    for n in sizes["latent"]:
        mu, lv, eps, gz = (torch.randn(B, n, device=dev, dtype=dtype) for _ in range(4))
        z, dmu, dlv = torch.empty_like(mu), torch.empty_like(mu), torch.empty_like(mu)
        gk = torch.randn(B, device=dev)
        max_blocks = math.ceil(n / min(BLOCKS))
        partial = torch.zeros(B, max_blocks, device=dev)
        n_row_blocks = math.ceil(B / tb.ROWS_PER_PROGRAM)
        dim_partial = torch.zeros(n_row_blocks, n, device=dev)

        def fwd():
            partial.zero_()
            latent_fwd[lambda m: (n_row_blocks, triton.cdiv(n, m["BLOCK"]))](
                mu, lv, eps, z, partial, dim_partial, B, n, max_blocks, -10.0, 10.0, 1,
                ROWS=tb.ROWS_PER_PROGRAM, PER_DIM=True, SEEDED=False)

        def bwd():
            latent_bwd[lambda m: (B, triton.cdiv(n, m["BLOCK"]))](
                gz, gk, gk, mu, lv, eps, dmu, dlv, B, n, -10.0, 10.0, 1, HAS_GD=False, SEEDED=False)

        fwd()  # autotunes
        fwd()  # the chosen config alone
        lv32 = lv.float().clamp(-10, 10)  # the tuned launch must still compute the op
        kl_ref = 0.5 * (mu.float() ** 2 + lv32.exp() - 1 - lv32).sum(1)
        torch.testing.assert_close(partial.sum(1), kl_ref, rtol=1e-3, atol=1e-2)
        for kernel, fn, tuner in (("latent_fwd_kernel", fwd, latent_fwd), ("latent_bwd_kernel", bwd, latent_bwd)):
            fn()  # the first call autotunes
            ms = do_bench(fn)
            rows.append({"kernel": kernel, "size": n, "dtype": str(dtype), "best_config": str(tuner.best_config),
                         "ms": ms})
            print(rows[-1], flush=True)
    for p in sizes["bce"]:
        x, t = torch.randn(B, p, device=dev, dtype=dtype), torch.rand(B, p, device=dev, dtype=dtype)
        dx, g = torch.empty_like(x), torch.randn(B, device=dev)
        max_blocks = math.ceil(p / min(BLOCKS))
        partial = torch.zeros(B, max_blocks, device=dev)

        def bfwd():
            partial.zero_()
            bce_fwd[lambda m: (B, triton.cdiv(p, m["BLOCK"]))](x, t, partial, p, max_blocks, CONTINUOUS=False)

        def bbwd():
            bce_bwd[lambda m: (B, triton.cdiv(p, m["BLOCK"]))](g, x, t, dx, p, CONTINUOUS=False)

        bfwd()
        bfwd()
        recon_ref = torch.nn.functional.binary_cross_entropy_with_logits(
            x.float(), t.float(), reduction="none").sum(1)
        torch.testing.assert_close(partial.sum(1), recon_ref, rtol=1e-3, atol=1e-2)
        for kernel, fn, tuner in (("bce_fwd_kernel", bfwd, bce_fwd), ("bce_bwd_kernel", bbwd, bce_bwd)):
            fn()
            ms = do_bench(fn)
            rows.append({"kernel": kernel, "size": p, "dtype": str(dtype), "best_config": str(tuner.best_config),
                         "ms": ms})
            print(rows[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"triton_autotune-{str(dtype).split('.')[-1]}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compile every config for sm_80/sm_90 (no GPU)")
    parser.add_argument("--quick", action="store_true", help="with --check: a subset of the configs")
    parser.add_argument("--smoke", action="store_true",
                        help="run the autotuning code on CPU under TRITON_INTERPRET=1 at tiny sizes (no timings)")
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    out = Path(args.results)
    if args.check:
        if os.environ.get("TRITON_INTERPRET") == "1":
            sys.exit("unset TRITON_INTERPRET for --check: the interpreter cannot compile for a GPU target")
        check(out, quick=args.quick)
        return
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--smoke runs the kernels on CPU: set TRITON_INTERPRET=1")
        rows = tune(torch.float32, out, device="cpu", batch=4, sizes={"latent": (40,), "bce": (300,)})
        assert all(r["best_config"] for r in rows)
        print(f"smoke: autotuned {len(rows)} kernels on CPU under the interpreter")
        return
    if not torch.cuda.is_available():
        sys.exit("autotuning needs a CUDA GPU; use --check to compile every config without one")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        tune(dtype, out)


if __name__ == "__main__":
    main()
