"""Forward+backward of the fused VAE loss per backend, against eager PyTorch and torch.compile of the same math.

    python benchmarks/bench_loss.py                 # CPU: native vs eager vs compile, fp32
    python benchmarks/bench_loss.py --dtype bf16    # another input dtype
    python benchmarks/bench_loss.py --quick         # one small case, few repeats (smoke test)
    python benchmarks/bench_loss.py --malloc default   # glibc's default allocator behaviour
    python benchmarks/bench_loss.py --noise         # the latent op, eps given vs seeded, against a bandwidth probe

``--noise``: the reparameterization + KL alone, eps given and seeded (the default noise path), forward and forward +
backward, at B = 256 and D from 128 to 16384 (32k to 4M elements), each row as a fraction of a bandwidth probe timed
interleaved with it: ``torch.add`` of two tensors of the same size into a fresh one.

By default every variant runs with glibc told to keep freed memory mapped (vaefast.perf.allocator), so that the
ops' fresh output tensors do not page-fault on every step; that spread the native op's timings by +-20% here.

Every variant computes z, the per-sample KL and the per-sample BCE, then one backward with fixed upstream
gradients to mu, logvar and the logits (``torch.autograd.grad`` with grad_outputs, so no extra reduction ops are
timed). Timing: CUDA uses ``triton.testing.do_bench``; CPU uses ``torch.utils.benchmark`` with the variants
interleaved round by round and the median taken, so noise on a shared machine hits all of them alike.

The roofline is ``dst.copy_(src)`` into a preallocated float32 buffer whose read + write bytes equal the op's
minimal traffic (10 latent element-passes + 5 pixel element-passes, see docs/design.md), measured in the same
run. Results go to benchmarks/results/bench_loss-<device>-<dtype>.json and a table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DTYPES, machine_info, update_readme_section, write_result  # noqa: E402

from vaefast.perf.allocator import keep_freed_memory  # noqa: E402
from vaefast.perf.loss_bench import (CASES, GPU_CASES, NOISE_BYTES, NOISE_DIMS, QUICK_CASES,  # noqa: E402
                                     run_case, run_noise_case)


def table(results: list[dict]) -> str:
    lines = ["| case | variant | median ms | GB/s | % of copy | x eager | x compile | saved MB (not inputs) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        v = r["variants"]
        for name, row in v.items():
            t = row["median_s"]
            lines.append(
                f"| {r['case']} | {name} | {t * 1e3:.3f} | {row['effective_GBps']:.1f} | "
                f"{100 * row['fraction_of_copy_bandwidth']:.0f}% | {v['eager']['median_s'] / t:.2f} | "
                f"{v['compile']['median_s'] / t:.2f} | {row['saved_bytes_total'] / 1e6:.2f} "
                f"({row['saved_bytes_not_inputs'] / 1e6:.2f}) |"
            )
        lines.append(f"| {r['case']} | copy roofline | | {r['copy_GBps']:.1f} | 100% | | | |")
    return "\n".join(lines)


def noise_table(results: list[dict]) -> str:
    names = list(NOISE_BYTES)
    lines = ["| B x D | elements | probe GB/s | " + " | ".join(f"{n} ms (% of probe)" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for r in results:
        cells = [f"{r['variants'][n]['median_s'] * 1e3:.3f} ({100 * r['variants'][n]['fraction_of_probe']:.0f}%)"
                 for n in names]
        lines.append(f"| {r['batch']} x {r['dim']} | {r['elements'] / 1e6:.2g}M | {r['probe']['GBps']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    parser.add_argument("--quick", action="store_true", help="one case, few rounds: a smoke test")
    parser.add_argument("--no-readme", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--suite", choices=["default", "gpu"], default="default",
                        help="gpu: D in {20, 512, 4096, 16384} and a 4x64x64 spatial latent")
    parser.add_argument("--results", help="write the JSON here instead of benchmarks/results/")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="CUDA: time each step replayed from a CUDA graph (GPU time alone, no launch overhead)")
    parser.add_argument("--noise", action="store_true",
                        help="the latent op alone, eps given vs seeded, forward and fwd+bwd, against a bandwidth probe")
    parser.add_argument("--malloc", choices=["keep-freed", "default"], default="keep-freed",
                        help="keep-freed: glibc keeps freed memory mapped for all variants (default); default: as is")
    args = parser.parse_args(argv)
    allocator = "glibc default"
    if args.malloc == "keep-freed" and keep_freed_memory():
        allocator = "glibc, freed memory kept (M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB)"
    if args.quick:
        args.rounds, args.min_time = 3, 0.01
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.noise:
        return noise_main(args, argv, device, allocator)
    results = [run_case(n, ls, ps, batch=args.batch, rounds=args.rounds, min_time=args.min_time, device=device,
                        dtype=dtype, cuda_graphs=args.cuda_graphs) for n, ls, ps in (QUICK_CASES if args.quick else GPU_CASES if args.suite == "gpu" else CASES)]
    command = "python benchmarks/bench_loss.py " + " ".join(argv if argv is not None else sys.argv[1:])
    timer = ("CUDA graph replay (GPU time)" if args.cuda_graphs else "CUDA events around Python calls (launch "
             "overhead included)") if device.type == "cuda" else "torch.utils.benchmark, variants interleaved"
    payload = {"benchmark": "bench_loss", "command": command.strip(), "dtype": args.dtype, "allocator": allocator,
               "timer": timer,
               "machine": machine_info(device), "results": results}
    name = (f"bench_loss-{device.type}-{args.dtype}" + ("-gpu-suite" if args.suite == "gpu" else "")
            + ("-default-malloc" if args.malloc == "default" else "") + ("-graphs" if args.cuda_graphs else ""))
    path = write_result(name, payload, quick=args.quick, folder=args.results)
    text = f"Timer: {timer}. Allocator: {allocator}.\n\n" + table(results)
    print(text)
    print(f"\nwrote {path}")
    if not args.quick and not args.no_readme:
        update_readme_section(name, payload, text)
    return payload


def noise_main(args, argv, device, allocator):
    backend = "triton" if device.type == "cuda" else "native"
    dims = NOISE_DIMS[:2] if args.quick else NOISE_DIMS
    results = [run_noise_case(args.batch, d, rounds=args.rounds, min_time=args.min_time, device=device,
                              backend=backend) for d in dims]
    command = "python benchmarks/bench_loss.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"benchmark": "bench_loss --noise", "command": command.strip(), "backend": backend,
               "allocator": allocator, "bytes_per_element": NOISE_BYTES, "machine": machine_info(device),
               "results": results}
    name = f"bench_loss-noise-{device.type}"
    path = write_result(name, payload, quick=args.quick, folder=args.results)
    text = (f"The {backend} reparameterization + KL, float32, {args.rounds} interleaved rounds (medians); bytes per "
            "element: " + ", ".join(f"{k} {v}" for k, v in NOISE_BYTES.items()) + "; the probe, torch.add into a fresh "
            "tensor, 12.\n\n" + noise_table(results))
    print(text)
    print(f"\nwrote {path}")
    if not args.quick and not args.no_readme:
        update_readme_section(name, payload, text)
    return payload


if __name__ == "__main__":
    main()
