"""End-to-end training images/s for the MLP and the conv VAE: eager, compiled, CUDA graphs and whole-step capture.

    python benchmarks/bench_throughput.py            # CPU or GPU, whichever torch sees
    python benchmarks/bench_throughput.py --quick    # few steps (smoke test)
    python benchmarks/bench_throughput.py --models "mlp 784-400-20 on 28x28" --batches 128 1024 \
        --modes eager reduce-overhead whole-step --precisions fp32 bf16 --name bench_step_capture-cuda

Steady-state training steps on preloaded batches (the loader is measured by bench_data.py), after warm-up steps
that absorb compilation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_section, write_result  # noqa: E402

from vaefast.data import ImageDataset  # noqa: E402
from vaefast.perf.bench import step_timing  # noqa: E402

MODELS = {
    "mlp 784-400-20 on 28x28": ((1, 28, 28), {"kind": "mlp", "hidden": [400], "latent_dim": 20}),
    "conv 64,128,256 latent 4x8x8 on 64x64 RGB": ((3, 64, 64), {"kind": "conv", "channels": [64, 128, 256],
                                                              "latent_channels": 4}),
}


MODES = {"eager": None, "default": "default", "reduce-overhead": "reduce-overhead", "whole-step": "whole-step"}


def measure(shape, model_kwargs, *, precision, compile_mode, batch, steps, warmup, device) -> dict:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch * (steps + warmup), *shape), generator=g, dtype=torch.uint8)
    return step_timing(ImageDataset("synthetic", images, images[:batch]), model=model_kwargs, precision=precision,
                       compile_mode=compile_mode, batch_size=batch, steps=steps, warmup=warmup, device=device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[128])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"], default=None,
                        help="default: fp32 and bf16, and fp16 on CUDA")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=None,
                        help="default: eager, default and whole-step, and reduce-overhead on CUDA")
    parser.add_argument("--name", default=None, help="results file and docs/performance.md section "
                        "(default: per device)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", help="write the JSON here instead of benchmarks/results/")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    steps, warmup, batches = (3, 2, [16]) if args.quick else (args.steps, 10, args.batches)
    precisions = args.precisions or ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    # reduce-overhead adds CUDA graphs, which exist on CUDA only.
    modes = args.modes or ["eager", "default", "whole-step"] + (["reduce-overhead"] if device.type == "cuda" else [])
    rows = []
    for name in args.models:
        shape, kwargs = MODELS[name]
        for batch in batches:
            for precision in precisions:
                for mode in modes:
                    timing = measure(shape, kwargs, precision=precision, compile_mode=MODES[mode], batch=batch,
                                     steps=steps, warmup=warmup, device=str(device))
                    rows.append({"model": name, "batch": batch, "precision": precision, "compile": mode, **timing})
                    print(rows[-1], flush=True)
    payload = {"benchmark": "bench_throughput", "command": "python benchmarks/bench_throughput.py "
               + " ".join(argv if argv is not None else sys.argv[1:]), "steps": steps,
               "machine": machine_info(device), "rows": rows}
    name = args.name or f"bench_throughput-{device.type}"
    path = write_result(name, payload, quick=args.quick, folder=args.results)
    lines = ["| model | batch | precision | compile | images/s | ms/step | host ms/step |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['precision']} | {r['compile']} | {r['images_per_s']:,.0f} | "
              f"{r['ms_per_step']:.2f} | {r['host_ms_per_step']:.2f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    print(f"wrote {path}")
    if not args.quick and not args.results:
        update_readme_section(name, payload, f"{steps} timed steps after {warmup} warm-up steps (compilation and "
                              "whole-step's capture happen there). host ms/step: the time the Python loop took to "
                              f"enqueue a step, before waiting for the device.\n\n{table}")


if __name__ == "__main__":
    main()
