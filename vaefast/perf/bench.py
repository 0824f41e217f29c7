"""`vaefast bench`: the fused-loss benchmark and the training throughput, with the machine and the roofline."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..data import ImageDataset, load_dataset
from ..config import TrainConfig
from ..train import Trainer
from ..train.metrics import WARMUP_STEPS
from .loss_bench import CASES, QUICK_CASES, run_case
from .machine import machine_info, thread_handoff_ns
from .roofline import step_compute_roofline


def step_throughput(dataset: ImageDataset, *, model: dict | None = None, precision: str = "auto",
                    compile_mode: str | None = None, batch_size: int = 128, steps: int = 100, warmup: int = 5,
                    device: str | None = None) -> tuple[float, str]:
    """Steady-state training images/s and the precision that ran (``step_timing``'s answer, in short)."""
    timing = step_timing(dataset, model=model, precision=precision, compile_mode=compile_mode,
                         batch_size=batch_size, steps=steps, warmup=warmup, device=device)
    return timing["images_per_s"], timing["precision"]


def step_timing(dataset: ImageDataset, *, model: dict | None = None, precision: str = "auto",
                compile_mode: str | None = None, batch_size: int = 128, steps: int = 100, warmup: int = 5,
                device: str | None = None, chunks: int = 5) -> dict:
    """Steady-state training speed: warm-up steps absorb compilation (and whole-step's capture); the memory
    loader's batches are an index_select; ``compile_mode`` None runs eagerly. The one step timer behind
    `vaefast bench`, bench_data.py and bench_throughput.py.

    The timed steps run in ``chunks`` runs, each followed by the same step's compute roofline
    (vaefast.perf.roofline) in this process: ``fraction_of_compute_roofline`` is the median over the chunks of the
    chunk's images/s over the roofline measured right after it. The shared cores' speed moves by tens of percent
    within a minute; one roofline measured once after all the steps put the fraction anywhere from 0.44 to 0.64 for
    the same build. ``chunk_handoff_ns`` holds, per chunk, the threads' cache-line round trip
    (vaefast.perf.machine.thread_handoff_ns) measured before the chunk and after its roofline: it tells the chunks
    run while the two cores shared a cache from those run while the host had them apart.

    ``host_ms_per_step`` is the time the Python loop took per step to enqueue the timed steps, before waiting for
    the device: on a GPU, close to ``ms_per_step`` when the host is the bottleneck and below it when the GPU is;
    on CPU the two are the same."""
    cfg = TrainConfig.from_options(batch_size=batch_size, precision=precision, compile=compile_mode is not None,
                                   compile_mode=compile_mode, progress=False, tensorboard=False,
                                   out=tempfile.mkdtemp(prefix="vaefast-bench-"), device=device, model=model or {})
    trainer = Trainer(cfg, dataset)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    trainer.run(max(warmup, WARMUP_STEPS))
    sync()
    x = next(iter(trainer.loader.batches()))
    dtype = torch.bfloat16 if trainer.precision == "bf16" else torch.float16 if trainer.precision == "fp16" else \
        torch.float32
    per_chunk = [steps // chunks + (1 if i < steps % chunks else 0) for i in range(chunks)]
    images = seconds = enqueued = 0.0
    fractions, rooflines, handoffs = [], [], []
    for chunk_steps in (n for n in per_chunk if n):
        handoff_before = thread_handoff_ns() if trainer.device.type == "cpu" else None
        counted = trainer.metrics.train_images  # every step past the trainer's own warm-up (short batches included)
        t0 = time.perf_counter()
        trainer.run(chunk_steps)
        enqueued += time.perf_counter() - t0
        sync()
        chunk_seconds = time.perf_counter() - t0
        chunk_images = trainer.metrics.train_images - counted
        roofline = step_compute_roofline(trainer.model, x, autocast=trainer.plan.autocast(), dtype=dtype)
        fractions.append(chunk_images / chunk_seconds / roofline["images_per_s"])
        rooflines.append(roofline)
        handoffs.append((handoff_before, thread_handoff_ns() if handoff_before is not None else None))
        images, seconds = images + chunk_images, seconds + chunk_seconds
    trainer.close()
    images_per_s = images / seconds
    roofline = rooflines[len(rooflines) // 2]
    return {"images_per_s": images_per_s, "precision": trainer.precision,
            "ms_per_step": 1e3 * seconds / steps, "host_ms_per_step": 1e3 * enqueued / steps,
            "plan": trainer.plan.describe(),
            "compute_roofline_images_per_s": statistics.median(r["images_per_s"] for r in rooflines),
            "fraction_of_compute_roofline": statistics.median(fractions), "chunk_fractions": fractions,
            "chunk_handoff_ns": handoffs, "roofline": roofline}


def training_throughput(precision: str, steps: int, batch_size: int = 128, device: str | None = None) -> dict:
    """The classic MLP on the embedded data."""
    full = load_dataset(None)
    timing = step_timing(ImageDataset("embedded", full.train, full.test[:500]), precision=precision,
                         batch_size=batch_size, steps=steps, device=device)
    return {"model": "mlp 784-400-20", "batch_size": batch_size, "precision": timing["precision"], "steps": steps,
            "images_per_s": timing["images_per_s"],
            "compute_roofline_images_per_s": timing["compute_roofline_images_per_s"],
            "fraction_of_compute_roofline": timing["fraction_of_compute_roofline"]}


def run_bench(*, quick: bool = False, device: str | None = None, dtype: torch.dtype = torch.float32) -> dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rounds, min_time = (3, 0.01) if quick else (20, 0.05)
    loss = [run_case(n, ls, ps, batch=256, rounds=rounds, min_time=min_time, device=device, dtype=dtype)
            for n, ls, ps in (QUICK_CASES if quick else CASES)]
    steps = 20 if quick else 200
    train = [training_throughput(p, steps, device=str(device)) for p in ("fp32", "auto")]
    roofline = {
        "reference": "copy_ into a preallocated buffer" + (" (device memcpy)" if device.type == "cuda" else ""),
        "cases": [{"case": r["case"], "copy_GBps": r["copy_GBps"], "clone_GBps": r["clone_GBps"],
                   "fused": {name: {"effective_GBps": v["effective_GBps"],
                                    "fraction_of_copy": v["fraction_of_copy_bandwidth"],
                                    "fraction_of_clone": v["fraction_of_clone_bandwidth"]}
                             for name, v in r["variants"].items()}} for r in loss],
    }
    return {"benchmark": "vaefast bench", "quick": quick, "device": str(device), "dtype": str(dtype),
            "machine": machine_info(device), "loss": loss, "train": train, "roofline": roofline}


def format_bench(result: dict) -> str:
    lines = [f"machine: {result['machine']['cpu']} ({result['machine']['cores']} cores), torch "
             f"{result['machine']['torch']}, triton {result['machine']['triton']}, DALI {result['machine']['dali']}, "
             f"GPU {result['machine']['gpu']}", "",
             f"{'loss case':<22} {'variant':<8} {'ms':>8} {'GB/s':>7} {'% copy':>7} {'x eager':>8} {'x compile':>9}"]
    for r in result["loss"]:
        v = r["variants"]
        for name, row in v.items():
            lines.append(f"{r['case']:<22} {name:<8} {row['median_s'] * 1e3:>8.3f} {row['effective_GBps']:>7.1f} "
                         f"{100 * row['fraction_of_copy_bandwidth']:>6.0f}% "
                         f"{v['eager']['median_s'] / row['median_s']:>8.2f} "
                         f"{v['compile']['median_s'] / row['median_s']:>9.2f}")
        lines.append(f"{r['case']:<22} {'copy':<8} {'':>8} {r['copy_GBps']:>7.1f}   (clone {r['clone_GBps']:.1f} GB/s)")
    lines.append("")
    for t in result["train"]:
        lines.append(f"train step, {t['model']}, batch {t['batch_size']}, {t['precision']}: "
                     f"{t['images_per_s']:,.0f} images/s, {100 * t['fraction_of_compute_roofline']:.0f}% of its "
                     f"matrix products and convolutions alone ({t['compute_roofline_images_per_s']:,.0f} images/s)")
    return "\n".join(lines)


def write(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
