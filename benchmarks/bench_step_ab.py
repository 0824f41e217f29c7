"""Two checkouts of vaefast's training step, A/B in one process: the classic MLP (784-400-20) at batch 128, fp32,
on the embedded Fashion-MNIST, each checkout's own Trainer, timed in short chunks interleaved in random order.

    mkdir /tmp/before && git archive <rev> vaefast | tar -x -C /tmp/before   # the older package's sources
    python benchmarks/bench_step_ab.py --before /tmp/before/vaefast

A folder without its own native library gets a copy of this checkout's, which the older package accepts only if
their ABI versions match; otherwise put a library built from <rev> into the folder (cmake, as bench_native_ab.py's
docstring shows). A comparison where one side would fall back to the PyTorch reference loss stops with the reason.

A change worth a few percent of a step is below the noise of timings taken in separate processes: the shared
cores' speed moves by tens of percent within minutes (docs/performance.md, issue #28). Here both trainers live in
one process and alternate every ``--steps`` steps, so a slow minute hits both alike; the figure is the median over
rounds of the ratio after / before, and each side's fraction of the step's GEMM roofline (vaefast.perf.roofline,
measured every ten rounds in the same process), and the same ratio over the rounds timed while the two cores
shared a cache and over those timed while the host had them apart (vaefast.perf.machine.core_placement). The
older package is imported under another name (``vaefast_before``), which works because the package imports itself
only relatively; it loads the native library found in its own folder. Results: benchmarks/results/bench_step_ab.json
and a table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_section, write_result  # noqa: E402

from vaefast import native  # noqa: E402
from vaefast.data import load_dataset  # noqa: E402
from vaefast.perf.machine import core_placement, thread_handoff_ns  # noqa: E402
from vaefast.perf.roofline import step_compute_roofline  # noqa: E402

MODEL = {"kind": "mlp", "hidden": [400], "latent_dim": 20}
BEFORE_NAME = "vaefast_before"


def import_before(folder: Path):
    """The package in ``folder`` (a ``vaefast`` source tree), imported as ``vaefast_before`` from a copy."""
    if not (folder / "__init__.py").is_file():
        raise SystemExit(f"--before {folder}: not a package folder (no __init__.py)")
    root = Path(tempfile.mkdtemp(prefix="vaefast-ab-"))
    shutil.copytree(folder, root / BEFORE_NAME)
    library = Path(native.library()._name) if native.load_error() is None else None
    if library is not None and not (root / BEFORE_NAME / library.name).exists():
        shutil.copy2(library, root / BEFORE_NAME / library.name)
    sys.path.insert(0, str(root))
    package = importlib.import_module(BEFORE_NAME)
    reason = importlib.import_module(f"{BEFORE_NAME}.native").load_error()
    if library is not None and reason is not None:  # its steps would run the reference loss: not an A/B of steps
        raise SystemExit(f"--before {folder}: its native library does not load: {reason}")
    return package


def trainer_of(package: str, full, batch: int, warmup: int):
    """A Trainer of ``package`` (vaefast or the older copy) on the embedded data, warmed up."""
    config = importlib.import_module(f"{package}.config")
    data = importlib.import_module(f"{package}.data")
    train = importlib.import_module(f"{package}.train")
    cfg = config.TrainConfig.from_options(batch_size=batch, precision="fp32", progress=False, tensorboard=False,
                                          out=tempfile.mkdtemp(prefix="vaefast-ab-"), model=MODEL)
    trainer = train.Trainer(cfg, data.ImageDataset("embedded", full.train, full.test[:500]))
    trainer.run(warmup)
    return trainer


PLACEMENT_LABELS = {"shared": "sharing a cache", "apart": "apart"}


def _placement_row(label: str, row: dict) -> str:
    if not row["rounds"]:
        return f"| {label} | 0 | - | - | - |"
    return (f"| {label} | {row['rounds']} | {row['before_ms_per_step']:.3f} | {row['after_ms_per_step']:.3f} | "
            f"{row['ratio_after_over_before']:.3f} |")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the older vaefast package folder")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed chunk")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int,
                        help="steps each trainer runs before the timed rounds (default: 5 chunks, at most 50); "
                             "about 1000 reach the state of a longer run, where dead units' Adam moments decay "
                             "into the subnormal range")
    parser.add_argument("--label", help="suffix of the results' name and docs section (bench_step_ab-LABEL)")
    parser.add_argument("--results", help="folder for the JSON (default benchmarks/results)")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    import_before(Path(args.before).resolve())
    full = load_dataset(None)
    warmup = min(50, 5 * args.steps) if args.warmup is None else args.warmup
    trainers = {"before": trainer_of(BEFORE_NAME, full, args.batch, warmup),
                "after": trainer_of("vaefast", full, args.batch, warmup)}
    x = next(iter(trainers["after"].loader.batches()))
    ms = {side: [] for side in trainers}
    roofline_ms = []
    placements = []
    for r in range(args.rounds):
        handoff_before = thread_handoff_ns(2000, 3)
        for side in random.sample(list(trainers), len(trainers)):
            t0 = time.perf_counter()
            trainers[side].run(args.steps)
            ms[side].append((time.perf_counter() - t0) / args.steps * 1e3)
        placements.append(core_placement(handoff_before, thread_handoff_ns(2000, 3)))
        if r % 10 == 0:
            roofline = step_compute_roofline(trainers["after"].model, x)
            roofline_ms.append(args.batch / roofline["images_per_s"] * 1e3)
    roof = statistics.median(roofline_ms)
    ratios = [a / b for a, b in zip(ms["after"], ms["before"])]
    result = {side: {"ms_per_step": statistics.median(v), "fraction_of_compute_roofline": roof / statistics.median(v)}
              for side, v in ms.items()}
    result["ratio_after_over_before"] = statistics.median(ratios)
    result["ratio_quartiles"] = statistics.quantiles(ratios, n=4)
    # The same comparison over the rounds timed while the two cores shared a cache, and while they were apart.
    result["by_placement"] = {}
    for kind in ("shared", "apart"):
        rounds = [i for i, p in enumerate(placements) if p == kind]
        result["by_placement"][kind] = {
            "rounds": len(rounds),
            "ratio_after_over_before": statistics.median(ratios[i] for i in rounds) if rounds else None,
            **{f"{side}_ms_per_step": statistics.median(ms[side][i] for i in rounds) if rounds else None
               for side in trainers}}
    result["roofline_ms_per_step"] = roof
    command = "python benchmarks/bench_step_ab.py " + " ".join(argv if argv is not None else sys.argv[1:])
    name = "bench_step_ab" + (f"-{args.label}" if args.label else "")
    payload = {"benchmark": name, "command": command.strip(), "model": "mlp 784-400-20",
               "batch": args.batch, "precision": "fp32", "rounds": args.rounds, "steps_per_chunk": args.steps,
               "warmup_steps": warmup,
               "machine": machine_info(torch.device("cpu")), "result": result}
    q1, _, q3 = result["ratio_quartiles"]
    text = "\n".join([
        "| side | ms/step (median) | fraction of the GEMM roofline |", "|---|---|---|",
        *(f"| {side} | {result[side]['ms_per_step']:.3f} | {result[side]['fraction_of_compute_roofline']:.1%} |"
          for side in trainers),
        f"| after / before | {result['ratio_after_over_before']:.3f} (quartiles {q1:.3f}-{q3:.3f}) | |",
        "", "| rounds timed while the cores were | rounds | before ms | after ms | after / before |",
        "|---|---|---|---|---|",
        *(_placement_row(label, result["by_placement"][kind]) for kind, label in PLACEMENT_LABELS.items())])
    path = write_result(name, payload, folder=args.results)
    print(text)
    print(f"\nwrote {path}")
    if not args.no_readme:
        update_readme_section(name, payload, text)
    return payload


if __name__ == "__main__":
    main()
