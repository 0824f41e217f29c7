"""How fast the command line answers, and where a default `vaefast train` spends its time outside the loop.

    python benchmarks/bench_startup.py              # 7 interleaved rounds
    python benchmarks/bench_startup.py --rounds 3

Each round runs, one after another in fresh interpreters: `python -c "import torch"` (the floor every torch program
pays), `vaefast --help`, `vaefast train --help`, and the default `vaefast train` (the embedded Fashion-MNIST
split, 10 epochs) with its phases timed from inside the process: imports, building the trainer (data, model, run
folder), the training loop (`Trainer.run`), per-epoch evaluation and everything else. Medians over rounds; only the
differences to `import torch` in the same round are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_section, write_result  # noqa: E402

# Runs the default `vaefast train` through the CLI, with the trainer's phases timed by wrapping its methods.
TRAIN_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t_torch = time.perf_counter()
import vaefast.cli
t_import = time.perf_counter()
from vaefast.train import Trainer
spent = {"run": 0.0, "evaluate": 0.0, "init": 0.0}
def timed(name, fn):
    def wrapper(*a, **k):
        start = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[name] += time.perf_counter() - start
    return wrapper
Trainer.run = timed("run", Trainer.run)
Trainer.evaluate = timed("evaluate", Trainer.evaluate)
Trainer.__init__ = timed("init", Trainer.__init__)
code = vaefast.cli.main(["train", "--out", sys.argv[1]])
end = time.perf_counter()
print(json.dumps({"import_torch": t_torch - t0, "import_vaefast": t_import - t_torch, "build": spent["init"],
                  "loop": spent["run"], "evaluate": spent["evaluate"], "total": end - t0, "exit": code}))
"""


def _wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    exe = sys.executable
    # The console script users type, beside this interpreter (python -m vaefast where it is not installed).
    script = Path(exe).with_name("vaefast")
    cli = [str(script)] if script.exists() else [exe, "-m", "vaefast"]
    rows = {"import torch": [], "vaefast --help": [], "vaefast train --help": []}
    phases = []
    for _ in range(args.rounds):
        rows["import torch"].append(_wall([exe, "-c", "import torch"]))
        rows["vaefast --help"].append(_wall([*cli, "--help"]))
        rows["vaefast train --help"].append(_wall([*cli, "train", "--help"]))
        with tempfile.TemporaryDirectory() as out:
            proc = subprocess.run([exe, "-c", TRAIN_PROBE, out], check=True, capture_output=True, text=True)
        phases.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    med = {name: statistics.median(v) for name, v in rows.items()}
    phase_med = {k: statistics.median(p[k] for p in phases) for k in phases[0] if k != "exit"}
    outside = statistics.median(p["total"] - p["import_torch"] - p["loop"] for p in phases)
    payload = {"machine": machine_info(), "command": "python benchmarks/bench_startup.py " + " ".join(sys.argv[1:]),
               "rounds": args.rounds, "wall_s": rows, "median_s": med, "train_phases_s": phases,
               "train_phase_median_s": phase_med, "outside_loop_beyond_import_torch_s": outside}
    table = ["| command | median s | beyond `import torch` s |", "|---|---|---|"]
    table += [f"| `{name}` | {m:.3f} | {m - med['import torch']:+.3f} |" for name, m in med.items()]
    table += ["", "Default `vaefast train` (embedded Fashion-MNIST, 10 epochs), phases timed inside the process "
              "(medians):", "", "| phase | s |", "|---|---|"]
    table += [f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in phase_med.items()]
    table += [f"| **outside the loop, beyond `import torch`** | **{outside:.3f}** |"]
    print("\n".join(table))
    print(f"wrote {write_result('bench_startup', payload)}")
    update_readme_section("bench_startup", payload, "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
