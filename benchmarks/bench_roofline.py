"""The training step against its compute roofline: `vaefast train`'s images/s beside the images/s its matrix
products and convolutions allow when each runs alone (vaefast.perf.roofline), measured in the same process right
after the timed steps, for the MLP (784-400-20) and the conv VAE (32-64, spatial latent 4) on the embedded
Fashion-MNIST at batch 128 and 1024, in fp32 and the run plan's precision.

Each case of each round runs in a fresh process, as `vaefast train` does: timed one after another in one process,
the MLP at batch 128 measured a tenth lower after the conv cases had run (the allocator's and caches' history).

Each timed chunk is also labelled with where the two cores were (vaefast.perf.machine.core_placement of the
threads' cache-line round trip measured before the chunk and after its roofline): sharing a last-level cache, or
put on two chiplets by the host. The table gives the median fraction of each kind of chunk beside the median of
all.

    python benchmarks/bench_roofline.py            # all eight cases, 3 rounds each, interleaved
    python benchmarks/bench_roofline.py --quick    # one round, fewer steps (results/quick/)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_section, write_result  # noqa: E402

from vaefast.data import ImageDataset, load_dataset  # noqa: E402
from vaefast.perf.bench import step_timing  # noqa: E402
from vaefast.perf.machine import core_placement  # noqa: E402

MODELS = {"mlp 784-400-20": {"kind": "mlp", "hidden": [400], "latent_dim": 20},
          "conv 32-64, latent 4x7x7": {"kind": "conv", "channels": [32, 64], "latent_channels": 4}}
# Timed steps per --steps: the MLP's steps are short, and each of step_timing's chunks (followed by its roofline)
# needs a few tenths of a second of them for its fraction to settle.
STEP_FACTOR = {"mlp 784-400-20": 5, "conv 32-64, latent 4x7x7": 1}


def time_case(name: str, batch: int, precision: str, steps: int) -> dict:
    """One case in this process: step_timing's answer without the per-layer roofline rows."""
    full = load_dataset(None)
    data = ImageDataset("embedded", full.train, full.test[:500])
    timing = step_timing(data, model=MODELS[name], precision=precision, batch_size=batch,
                         steps=steps * STEP_FACTOR[name])
    timing.pop("roofline")
    return timing


def placement_fractions(timings: list[dict]) -> dict:
    """Median fraction of the chunks timed while the two cores shared a cache, and of those timed while they were
    apart, with the number of each; a chunk whose two handoff measurements disagree (the host moved a core during
    it) counts in neither."""
    kinds: dict[str, list[float]] = {"shared": [], "apart": []}
    for timing in timings:
        for fraction, handoffs in zip(timing["chunk_fractions"], timing["chunk_handoff_ns"]):
            kind = core_placement(*handoffs)
            if kind is not None:
                kinds[kind].append(fraction)
    return {kind: {"fraction_median": statistics.median(f) if f else None, "chunks": len(f)}
            for kind, f in kinds.items()}


def _placement_cell(kind: dict) -> str:
    if kind["fraction_median"] is None:
        return "- (0)"
    return f"{100 * kind['fraction_median']:.0f}% ({kind['chunks']})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--case", help=argparse.SUPPRESS)  # JSON [name, batch, precision]: time one case, print JSON
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(time_case(*json.loads(args.case), steps=args.steps)))
        return
    if args.quick:
        args.rounds, args.steps = 1, 10
    cases = [(name, batch, precision) for name in MODELS for batch in (128, 1024) for precision in ("fp32", "auto")]
    runs: dict[tuple, list[dict]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case in cases:
            name, batch, precision = case
            done = subprocess.run([sys.executable, __file__, "--case", json.dumps(case), "--steps", str(args.steps)],
                                  check=True, capture_output=True, text=True)
            timing = json.loads(done.stdout.strip().splitlines()[-1])
            runs[case].append(timing)
            print(f"{name:26s} b{batch:<5d} {timing['precision']:5s} {timing['images_per_s']:9,.0f} img/s "
                  f"{100 * timing['fraction_of_compute_roofline']:5.1f}% of its roofline", file=sys.stderr)
    rows = []
    for (name, batch, precision), timings in runs.items():
        fractions = [t["fraction_of_compute_roofline"] for t in timings]
        rows.append({"model": name, "batch_size": batch, "requested_precision": precision,
                     "precision": timings[0]["precision"],
                     "images_per_s": statistics.median(t["images_per_s"] for t in timings),
                     "roofline_images_per_s": statistics.median(t["compute_roofline_images_per_s"] for t in timings),
                     "fraction_median": statistics.median(fractions), "fraction_min": min(fractions),
                     "fraction_max": max(fractions), "by_placement": placement_fractions(timings),
                     "rounds": timings})
    payload = {"machine": machine_info("cpu"), "rows": rows, "process": "one fresh process per case and round",
               "command": "python benchmarks/bench_roofline.py" + (" --quick" if args.quick else "")}
    table = ["| model | batch | precision | trainer images/s | roofline images/s | fraction (min-max) | "
             "cores sharing a cache: fraction (chunks) | cores apart: fraction (chunks) |",
             "|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | {r['batch_size']} | {r['precision']} | {r['images_per_s']:,.0f} | "
              f"{r['roofline_images_per_s']:,.0f} | {100 * r['fraction_median']:.0f}% "
              f"({100 * r['fraction_min']:.0f}-{100 * r['fraction_max']:.0f}%) | "
              f"{_placement_cell(r['by_placement']['shared'])} | {_placement_cell(r['by_placement']['apart'])} |"
              for r in rows]
    print("\n".join(table))
    print(f"wrote {write_result('bench_roofline', payload, quick=args.quick)}")
    if not args.quick:
        update_readme_section("bench_roofline", payload, "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
