"""Two builds of the native kernel library, A/B on bench_loss's native rows, interleaved in one process.

    git worktree add /tmp/before <rev> && cmake -S /tmp/before -B /tmp/before/build && cmake --build /tmp/before/build
    python benchmarks/bench_native_ab.py --before /tmp/before/build/libvaefast_kernels.so

Both libraries are loaded into one process (ctypes keeps their symbols apart), and each timed step points the
native launchers at its own library, so the rows of both builds are interleaved round by round by
vaefast.perf.loss_bench's timer, on the same inputs, and the shared cores' speed, which moves, hits them alike (timed
in separate processes, one build's rows moved 1.6x between processes with the other's). The figure is the ratio
after / before of the median times. Results go to benchmarks/results/bench_native_ab-<dtype>[-<label>].json and a
table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DTYPES, machine_info, update_readme_section, write_result  # noqa: E402

from vaefast import native  # noqa: E402
from vaefast.ops import native_backend  # noqa: E402
from vaefast.perf.allocator import keep_freed_memory  # noqa: E402
from vaefast.perf.loss_bench import CASES, fused, fused_continuous, fused_seeded, make_inputs, step_fn, \
    time_cpu  # noqa: E402

NATIVE_ROWS = ("native", "native seeded", "native, continuous Bernoulli")


def load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    native._bind(lib)
    if lib.vf_abi_version() != native.ABI_VERSION:
        raise SystemExit(f"{path}: ABI version {lib.vf_abi_version()}, this checkout's launchers need "
                         f"{native.ABI_VERSION}")
    return lib


def on_library(lib: ctypes.CDLL, step):
    """The step with the native launchers pointed at ``lib`` for its duration."""
    def run():
        native_backend.library = lambda: lib
        return step()
    return run


def run_case(name, latent_shape, pixel_shape, libraries: dict, *, batch, dtype, rounds, min_time) -> dict:
    leaves, upstream = make_inputs(batch, latent_shape, pixel_shape, dtype, torch.device("cpu"))
    seed = torch.tensor([12345])
    variants = {"native": fused("native"), "native seeded": fused_seeded("native", seed),
                "native, continuous Bernoulli": fused_continuous("native")}
    steps = {f"{row} [{label}]": on_library(lib, step_fn(fn, leaves, upstream))
             for row, fn in variants.items() for label, lib in libraries.items()}
    for step in steps.values():
        for _ in range(3):
            step()
    timings = time_cpu(steps, rounds, min_time)
    rows = {}
    for row in NATIVE_ROWS:
        before, after = timings[f"{row} [before]"], timings[f"{row} [after]"]
        rows[row] = {"before_s": before["median_s"], "after_s": after["median_s"],
                     "ratio": after["median_s"] / before["median_s"],
                     "before_p10_p90_s": [before["p10_s"], before["p90_s"]],
                     "after_p10_p90_s": [after["p10_s"], after["p90_s"]]}
    return {"case": name, "batch": batch, "rows": rows}


def table(results: list[dict]) -> str:
    lines = ["| case | row | before ms | after ms | after / before |", "|---|---|---|---|---|"]
    for r in results:
        for row, v in r["rows"].items():
            lines.append(f"| {r['case']} | {row} | {v['before_s'] * 1e3:.3f} | {v['after_s'] * 1e3:.3f} | "
                         f"{v['ratio']:.3f} |")
    ratios = [v["ratio"] for r in results for v in r["rows"].values()]
    lines.append(f"| all | geometric mean | | | {statistics.geometric_mean(ratios):.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the library to compare against (a .so built elsewhere)")
    parser.add_argument("--after", help="the library under test (default: the one vaefast loads)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--min-time", type=float, default=0.03, help="seconds per timed sample")
    parser.add_argument("--label", default="", help="a suffix for the result's name (several comparisons kept apart)")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    keep_freed_memory()
    paths = {"before": str(Path(args.before).resolve()),
             "after": str(Path(args.after or native.library()._name).resolve())}
    libraries = {label: load(path) for label, path in paths.items()}
    results = [run_case(n, ls, ps, libraries, batch=args.batch, dtype=DTYPES[args.dtype], rounds=args.rounds,
                        min_time=args.min_time) for n, ls, ps in CASES]
    command = "python benchmarks/bench_native_ab.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"benchmark": "bench_native_ab", "command": command.strip(), "dtype": args.dtype,
               "libraries": paths, "timer": "torch.utils.benchmark, both builds interleaved in one process",
               "machine": machine_info(torch.device("cpu")), "results": results}
    name = f"bench_native_ab-{args.dtype}" + (f"-{args.label}" if args.label else "")
    path = write_result(name, payload)
    text = table(results)
    print(text)
    print(f"\nwrote {path}")
    if not args.no_readme:
        update_readme_section(name, payload, text)
    return payload


if __name__ == "__main__":
    main()
