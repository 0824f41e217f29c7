"""Loader throughput against the trainer's step rate: can data loading starve training?

    python benchmarks/bench_data.py            # Fashion-MNIST 60k + a 20k-JPEG 64x64 folder generated from it

For each dataset and loader: images/s over one full epoch after a warm-up epoch (DALI and worker start-up
excluded), and beside them the images/s of the training step alone (preloaded batches) for the model that dataset
would train, so a reader sees whether the loader keeps up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_section, write_result  # noqa: E402

from vaefast.data import load_dataset, make_loader  # noqa: E402
from vaefast.data.streaming import dali_unavailable_reason  # noqa: E402
from vaefast.perf.bench import step_throughput  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


def jpeg_folder(source, root: Path, n: int, size: int = 64) -> Path:
    """n RGB JPEGs of size x size made from Fashion-MNIST (cached between runs)."""
    if root.exists() and len(list(root.glob("*.jpg"))) >= n:
        return root
    root.mkdir(parents=True, exist_ok=True)
    images = source.train
    for i in range(n):
        img = Image.fromarray(images[i % len(images), 0].numpy()).convert("RGB").resize((size, size), Image.BILINEAR)
        img.save(root / f"{i:06d}.jpg", quality=90)
    return root


def loader_rate(kind, dataset, batch_size, workers) -> dict:
    t0 = time.perf_counter()
    loader, chosen, _ = make_loader(kind, dataset, batch_size, device="cpu", num_workers=workers)
    setup = time.perf_counter() - t0
    loader.set_epoch(0)
    for _ in loader.batches():  # warm-up epoch
        pass
    loader.set_epoch(1)
    t0 = time.perf_counter()
    n = sum(len(b) for b in loader.batches())
    seconds = time.perf_counter() - t0
    return {"loader": chosen, "images_per_s": n / seconds, "epoch_seconds": seconds, "setup_seconds": setup,
            "images": n}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--jpegs", type=int, default=20_000)
    parser.add_argument("--jpeg-dir", default="/tmp/vaefast-bench-jpeg64")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.jpegs, args.jpeg_dir = 2000, args.jpeg_dir + "-quick"
    kinds = ["memory", "torch"] + (["dali"] if dali_unavailable_reason() is None else [])
    rows = []

    fmnist = load_dataset(args.data)
    for kind in ("memory", "torch"):  # DALI reads files; the array source has none (see the analysis)
        rows.append({"dataset": "Fashion-MNIST 60k 28x28 (IDX)", **loader_rate(kind, fmnist, 128, args.workers)})
    mlp_rate, _ = step_throughput(fmnist, model={"kind": "mlp", "hidden": [400], "latent_dim": 20}, steps=50,
                                  warmup=10)

    t0 = time.perf_counter()
    folder = jpeg_folder(fmnist, Path(args.jpeg_dir), args.jpegs)
    generate = time.perf_counter() - t0
    jpegs = load_dataset(str(folder), test_fraction=0.02)
    for kind in kinds:
        jpegs = load_dataset(str(folder), test_fraction=0.02)  # fresh: the memory loader decodes in place
        rows.append({"dataset": f"{args.jpegs} JPEGs 64x64 RGB", **loader_rate(kind, jpegs, 128, args.workers)})
    conv_data = load_dataset(str(folder), test_fraction=0.02).materialize()
    conv_rate, _ = step_throughput(conv_data, model={"kind": "conv", "channels": [32, 64], "latent_channels": 4},
                                   steps=30, warmup=10)

    payload = {"benchmark": "bench_data", "command": "python benchmarks/bench_data.py " + " ".join(argv or sys.argv[1:]),
               "machine": machine_info("cpu"), "workers": args.workers, "rows": rows,
               "train_step_images_per_s": {"mlp 784-400-20 on 28x28": mlp_rate,
                                           "conv 32,64 spatial latent 4x16x16 on 64x64x3": conv_rate},
               "jpeg_generation_seconds": generate}
    path = write_result("bench_data-cpu", payload, quick=args.quick)
    lines = ["| data | loader | images/s (one epoch, warm) | setup s | vs the training step |", "|---|---|---|---|---|"]
    for r in rows:
        step = mlp_rate if r["dataset"].startswith("Fashion") else conv_rate
        lines.append(f"| {r['dataset']} | {r['loader']} | {r['images_per_s']:,.0f} | {r['setup_seconds']:.1f} | "
                     f"{r['images_per_s'] / step:.1f}x |")
    lines.append(f"\nTraining step alone (preloaded batches, batch 128, bf16 autocast): MLP on 28x28 "
                 f"{mlp_rate:,.0f} images/s; conv VAE on 64x64 RGB {conv_rate:,.0f} images/s. A loader above 1x keeps "
                 f"up. The memory loader's setup column includes decoding the whole folder once.")
    table = "\n".join(lines)
    print(table)
    print(f"wrote {path}")
    if not args.quick:
        update_readme_section("bench_data-cpu", payload, table)


if __name__ == "__main__":
    main()
