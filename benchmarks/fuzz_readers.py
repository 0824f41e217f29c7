"""The long fuzz of the data readers, run before each release of them: thousands of truncated, bit-flipped and
random inputs per format (IDX plain and gzip, .npy, .npz, PNG, JPEG, WebDataset tar, MP4 clips), with hypothesis'
random seeds rather than CI's fixed ones. The allowed outcomes are those of tests/test_fuzz_inputs.py, which this runs with
VAEFAST_FUZZ_EXAMPLES examples per test: a correct array or a DataError naming the file, never another exception.

    python benchmarks/fuzz_readers.py                 # 1500 examples per test (about 12,000 inputs)
    python benchmarks/fuzz_readers.py --examples 200  # shorter

A failing example is printed by hypothesis with its reproduction (and kept in .hypothesis/); add it to the test
file as an explicit @example. Results go to benchmarks/results/fuzz_readers.json and a table in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = ("<!-- fuzz_readers:start -->", "<!-- fuzz_readers:end -->")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1500, help="hypothesis examples per fuzz test")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        counts = Path(tmp) / "reliability.json"
        env = {**os.environ, "VAEFAST_RELIABILITY_JSON": str(counts), "VAEFAST_FUZZ_EXAMPLES": str(args.examples),
               "HYPOTHESIS_PROFILE": "dev"}  # random seeds: CI's profile derandomizes
        env.pop("CI", None)
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/test_fuzz_inputs.py"], cwd=ROOT, env=env)
        seconds = time.perf_counter() - start
        scenarios = json.loads(counts.read_text()) if counts.exists() else {}
    command = "python benchmarks/fuzz_readers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"benchmark": "fuzz_readers", "command": command.strip(), "examples_per_test": args.examples,
               "pytest_exit_status": run.returncode, "seconds": seconds, "scenarios": scenarios,
               "machine": machine_info()}
    path = write_result("fuzz_readers", payload)
    lines = ["| format | inputs tried | inputs passed |", "|---|---|---|"]
    lines += [f"| {name.removeprefix('fuzzed bytes: ')} | {e['tried']} | {e['passed']} |"
              for name, e in scenarios.items() if name.startswith("fuzzed bytes")]
    table = "\n".join(lines)
    print(table, f"\npytest exit status {run.returncode} in {seconds:.0f} s; wrote {path}")
    if not args.no_readme:
        readme = ROOT / "docs" / "reliability.md"
        text = readme.read_text()
        block = (f"{SECTION[0]}\nCommand: `{payload['command']}`  \nDate: {time.strftime('%Y-%m-%d')}; machine: "
                 f"{payload['machine'].get('cpu', '')}; pytest exit status {run.returncode} in {seconds:.0f} s.\n\n"
                 f"{table}\n{SECTION[1]}")
        if SECTION[0] in text:
            head, rest = text.split(SECTION[0], 1)
            text = head + block + rest.split(SECTION[1], 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n## The long reader fuzz\n\n" + block + "\n"
        readme.write_text(text)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
