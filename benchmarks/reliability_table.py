"""The Reliability table (docs/reliability.md), from a test run: each failure scenario, the cases tried and passed, and what is
guaranteed. The tests count their cases through the `reliability` fixture (tests/conftest.py).

    python benchmarks/reliability_table.py            # runs the reliability tests, rewrites the docs/reliability.md section
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "docs" / "reliability.md"
TESTS = ["tests/test_checkpoint_integrity.py", "tests/test_kill_fuzz.py", "tests/test_preemption.py",
         "tests/test_fuzz_inputs.py", "tests/test_fuzz_ops.py", "tests/test_sync_free.py", "tests/test_trainer.py",
         "tests/test_distributed.py", "tests/test_elastic.py", "tests/test_async_checkpoint.py",
         "tests/test_resume_auto.py"]
GUARANTEES = {
    "checkpoint: one flipped byte in the tensor data": "CheckpointError naming the file (SHA-256 over the contents)",
    "checkpoint: one flipped byte anywhere in the file": "CheckpointError, or a byte the loader never reads",
    "checkpoint: a pickle that runs a command": "refused by the weights-only load; the command never runs",
    "checkpoint: previous format, refused unless trusted": "loads only with --trust-checkpoint",
    "resume: newest checkpoint corrupt": "resumes from the newest good one with a warning (or refuses)",
    "full disk during a checkpoint write": "one line naming the folder and sizes; old checkpoint intact, no temp file",
    "read-only disk": "one line naming the folder, at start or at a checkpoint; old checkpoint intact, no temp file",
    "full disk during a log write": "one line naming the run folder, no traceback",
    "SIGKILL at a random moment, then --resume (fp32)": "ends bit-identical to an uninterrupted run",
    "SIGKILL at a random moment, then --resume (bf16)": "ends bit-identical (bf16 with float32 master weights)",
    "SIGKILL at a random moment, then --resume (ldm)": "ends bit-identical (discriminator, its Adam, logvar too)",
    "SIGTERM: checkpoint, exit 75, --resume": "checkpoint at the step boundary; resume bit-identical",
    "a second SIGTERM": "stops at once; every complete checkpoint loads",
    "SIGTERM under torchrun (2 ranks)": "both ranks stop at the same log step; resume continues on 2 ranks",
    "elastic: SIGKILL of a rank under torchrun --max-restarts, --resume auto":
        "exits 0; weights and Adam moments bit-identical to an uninterrupted 2-rank run",
    "elastic: SIGKILL of a rank under torchrun --max-restarts, --resume auto (LDM recipe)":
        "exits 0; discriminator, its Adam, logvar too bit-identical",
    "asynchronous checkpoint: full disk during the background write":
        "the one-line error at the next step boundary; old checkpoint intact",
    "asynchronous checkpoint: SIGKILL during the background write": "previous checkpoint loads; no partial file",
    "--resume auto: empty folder, then a good run": "starts fresh, then continues bit for bit",
    "--resume auto: newest checkpoint corrupt": "resumes from the newest good one",
    "--resume auto: a folder of another run": "refused, naming the fields that differ",
    "logs after a kill and resume": "each step logged once, with the values of the run that continues",
    "fuzzed bytes: IDX (plain, gzip)": "a correct array or a DataError naming the file",
    "fuzzed bytes: .npy, .npz": "a correct array or a DataError naming the file",
    "fuzzed bytes: PNG, JPEG": "a correct image or a DataError naming the file",
    "fuzzed bytes: WebDataset tar shard": "correct samples or a DataError naming the shard",
    "fuzzed ops: reparameterize_kl": "the reference's values (NaN/Inf in place) or a named ValueError/TypeError",
    "fuzzed ops: FusedVAELoss": "the reference's values (NaN/Inf in place) or a named ValueError/TypeError",
    "fused BCE at ±Inf logits": "the mathematical limit (+Inf or 0), not NaN",
    "NaN batch: step skipped, nothing changed": "weights, moments, EMA untouched; decided on the device",
    "NaN batch or weight gradient: step skipped, nothing changed": "weights (and master weights) untouched",
    "persistent NaN: stop with a diagnosis, last checkpoint intact": "names the non-finite tensors",
    "weight poisoned mid-run: skipped, then stop naming it": "no checkpoint of the poisoned state; names the weight",
    "NaN on one of 2 DDP ranks: skipped on both": "ranks stay identical",
}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "reliability.json"
        env = {**os.environ, "VAEFAST_RELIABILITY_JSON": str(results)}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
                              *TESTS], cwd=ROOT, env=env)  # both tiers: the kill and elastic fuzzing are slow
        scenarios = json.loads(results.read_text()) if results.exists() else {}
    if not scenarios:
        print("reliability_table: no scenario was recorded", file=sys.stderr)
        return 1
    lines = ["| scenario | cases tried | cases passed | guaranteed |", "|---|---|---|---|"]
    for name in sorted(scenarios, key=lambda n: list(GUARANTEES).index(n) if n in GUARANTEES else 99):
        entry = scenarios[name]
        lines.append(f"| {name} | {entry['tried']} | {entry['passed']} | {GUARANTEES.get(name, '')} |")
    date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    block = (f"<!-- reliability:start -->\nGenerated by `python benchmarks/reliability_table.py` from the test run of "
             f"{date} (pytest exit status {run.returncode}).\n\n" + "\n".join(lines) + "\n<!-- reliability:end -->")
    text = README.read_text()
    pattern = re.compile(r"<!-- reliability:start -->.*?<!-- reliability:end -->", re.S)
    if not pattern.search(text):
        print("reliability_table: docs/reliability.md has no reliability markers", file=sys.stderr)
        return 1
    README.write_text(pattern.sub(lambda _: block, text))
    print("\n".join(lines))
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
