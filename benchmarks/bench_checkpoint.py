"""How long the step loop stalls for a checkpoint: written in the background (vaefast's default) against written in
the step loop, on a model whose checkpoint is over 200 MB.

    python benchmarks/bench_checkpoint.py               # MLP 784-4096-4096-2048, Adam: about 600 MB per checkpoint
    python benchmarks/bench_checkpoint.py --rounds 2 --hidden 2048 2048

Each round builds one trainer per mode, takes warm-up steps, then times: a plain step (the reference), the
``save`` call (what the loop waits for: the copy to host memory in the background mode; the hash, the write and the
fsyncs in the other), the step right after it (which runs beside the background write), and the wait for the write
to finish. Modes interleave round by round; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_section, write_result  # noqa: E402

from vaefast.config import TrainConfig  # noqa: E402
from vaefast.data import ImageDataset  # noqa: E402
from vaefast.train import Trainer  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(background: bool, hidden: list[int], batch: int) -> dict:
    images = torch.randint(0, 256, (batch * 8, 1, 28, 28), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig.from_options(out=out, hidden=hidden, latent_dim=hidden[-1] // 2, batch_size=batch,
                                       precision="fp32", progress=False, tensorboard=False, keep_checkpoints=1)
        trainer = Trainer(cfg, ImageDataset("synthetic", images, images[:batch]))
        trainer.checkpointer.background = background
        batches = iter(trainer.loader.batches())
        for _ in range(3):
            trainer.train_step(next(batches))
        plain = _timed(lambda: trainer.train_step(next(batches)))
        save = _timed(trainer.save)
        after = _timed(lambda: trainer.train_step(next(batches)))
        wait = _timed(trainer.checkpointer.wait)
        size = trainer.checkpointer.latest().stat().st_size / 2**20
    return {"plain_step_s": plain, "save_call_s": save, "next_step_s": after, "wait_s": wait, "checkpoint_mb": size}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[4096, 4096, 2048])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    runs = {"in the step loop": [], "background": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(measure(mode == "background", args.hidden, args.batch_size))
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()}
    table = ["| checkpoint write | checkpoint MB | plain step s | save() s | next step s | stall s | wait s |",
             "|---|---|---|---|---|---|---|"]
    for mode, m in med.items():
        stall = m["save_call_s"] + m["next_step_s"] - m["plain_step_s"]
        table.append(f"| {mode} | {m['checkpoint_mb']:.0f} | {m['plain_step_s']:.3f} | {m['save_call_s']:.3f} | "
                     f"{m['next_step_s']:.3f} | {stall:.3f} | {m['wait_s']:.3f} |")
    table.append("\nstall: what the checkpoint adds to the loop (save() plus the next step, less a plain step); wait: "
                 "what is left of the background write after that step (paid only at the end or at the next save).")
    payload = {"machine": machine_info(), "command": "python benchmarks/bench_checkpoint.py " + " ".join(sys.argv[1:]),
               "hidden": args.hidden, "batch_size": args.batch_size, "runs": runs, "median": med}
    print("\n".join(table))
    print(f"wrote {write_result('bench_checkpoint-cpu', payload)}")
    update_readme_section("bench_checkpoint-cpu", payload, "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
