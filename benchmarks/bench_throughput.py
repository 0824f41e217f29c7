"""End-to-end training images/s for the MLP and the conv VAE, with and without torch.compile and AMP.

    python benchmarks/bench_throughput.py            # CPU or GPU, whichever torch sees
    python benchmarks/bench_throughput.py --quick    # few steps (smoke test)

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
from vaefast.perf.bench import step_throughput  # noqa: E402

MODELS = {
    "mlp 784-400-20 on 28x28": ((1, 28, 28), {"kind": "mlp", "hidden": [400], "latent_dim": 20}),
    "conv 64,128,256 latent 4x8x8 on 64x64 RGB": ((3, 64, 64), {"kind": "conv", "channels": [64, 128, 256],
                                                              "latent_channels": 4}),
}


def measure(shape, model_kwargs, *, precision, compile_mode, batch, steps, warmup, device) -> float:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch * (steps + warmup), *shape), generator=g, dtype=torch.uint8)
    rate, _ = step_throughput(ImageDataset("synthetic", images, images[:batch]), model=model_kwargs,
                              precision=precision, compile_mode=compile_mode, batch_size=batch, steps=steps,
                              warmup=warmup, device=device)
    return rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", help="write the JSON here instead of benchmarks/results/")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    steps, warmup, batch = (3, 2, 16) if args.quick else (args.steps, 10, args.batch)
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    # reduce-overhead adds CUDA graphs, which exist on CUDA only.
    modes = [None, "default"] + (["reduce-overhead"] if device.type == "cuda" else [])
    rows = []
    for name, (shape, kwargs) in MODELS.items():
        for precision in precisions:
            for mode in modes:
                rate = measure(shape, kwargs, precision=precision, compile_mode=mode, batch=batch, steps=steps,
                               warmup=warmup, device=str(device))
                rows.append({"model": name, "precision": precision, "compile": mode or "no",
                             "images_per_s": rate})
                print(rows[-1], flush=True)
    payload = {"benchmark": "bench_throughput", "command": "python benchmarks/bench_throughput.py "
               + " ".join(argv if argv is not None else sys.argv[1:]), "batch": batch, "steps": steps,
               "machine": machine_info(device), "rows": rows}
    name = f"bench_throughput-{device.type}"
    path = write_result(name, payload, quick=args.quick, folder=args.results)
    lines = ["| model | precision | compile | images/s |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['compile']} | {r['images_per_s']:,.0f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    print(f"wrote {path}")
    if not args.quick and not args.results:
        update_readme_section(name, payload, f"Batch {batch}, {steps} timed steps after 10 warm-up steps.\n\n{table}")


if __name__ == "__main__":
    main()
