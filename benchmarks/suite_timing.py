"""The test suite's time by file, from pytest's JUnit XML: the table of docs/testing.md ("Where the time goes").

    PYTEST_ADDOPTS="--junitxml=/tmp/default.xml" python -m pytest          # the README's command, verbatim
    PYTEST_ADDOPTS="--junitxml=/tmp/slow.xml" python -m pytest -m slow
    python benchmarks/suite_timing.py /tmp/default.xml /tmp/slow.xml      # JSON + the table in docs/testing.md

Each XML is one tier; its tests' times (setup, call and teardown) are summed per file, and the whole run's time is
pytest's own. The machine, torch and the date are recorded with them.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DOC = ROOT / "docs" / "testing.md"
BEGIN, END = "<!-- suite-timing:begin -->", "<!-- suite-timing:end -->"


def isa_flags() -> list[str]:
    """The instruction-set extensions that change what the suite runs (docs/testing.md)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    names = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_tile": "AMX"}
    return [label for flag, label in names.items() if flag in flags]


def read_tier(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    files: dict[str, dict] = collections.defaultdict(lambda: {"seconds": 0.0, "tests": 0})
    for case in suite.iter("testcase"):
        name = case.get("classname", "").split(".")[-1] + ".py"
        entry = files[f"tests/{name}"]
        entry["seconds"] = round(entry["seconds"] + float(case.get("time", 0.0)), 3)
        entry["tests"] += 0 if case.find("skipped") is not None else 1
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {"seconds": float(suite.get("time", 0.0)), **counts,
            "files": dict(sorted(files.items(), key=lambda kv: -kv[1]["seconds"]))}


def table(tiers: dict[str, dict], machine: dict, command: str, date: str) -> str:
    lines = [f"Measured {date} on {machine.get('cpu', '?')} ({machine.get('cores', '?')} cores; "
             f"{', '.join(machine.get('isa_flags', [])) or 'no AVX2'}), torch {machine.get('torch', '?')}; "
             f"`{command}`.", "",
             "| tier | tests run | skipped | pytest's time |", "|---|---|---|---|"]
    for name, tier in tiers.items():
        run = tier["tests"] - tier["skipped"]
        seconds = tier["seconds"]
        lines.append(f"| {name} | {run} | {tier['skipped']} | {seconds:.0f} s ({seconds / 60:.1f} min) |")
    lines += ["", "| file | tier | tests | seconds |", "|---|---|---|---|"]
    rows = [(f, name, e) for name, tier in tiers.items() for f, e in tier["files"].items()]
    for f, name, e in sorted(rows, key=lambda r: -r[2]["seconds"]):
        if e["seconds"] >= 1.0:
            lines.append(f"| {f} | {name} | {e['tests']} | {e['seconds']:.1f} |")
    lines.append("")
    lines.append("Files under a second are left out.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("default", help="JUnit XML of `python -m pytest`")
    p.add_argument("slow", nargs="?", help="JUnit XML of `python -m pytest -m slow`")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)
    from vaefast.perf.machine import machine_info

    tiers = {"default": read_tier(Path(args.default))}
    if args.slow:
        tiers["slow"] = read_tier(Path(args.slow))
    machine = {**machine_info("cpu"), "isa_flags": isa_flags()}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m pytest" + ("; python -m pytest -m slow" if args.slow else "")
    payload = {"benchmark": "suite_timing", "machine": machine, "date": date, "command": command, "tiers": tiers}
    out = Path(args.results) / "suite_timing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    text = table(tiers, machine, command, date)
    print(text)
    if not args.no_docs:
        doc = DOC.read_text()
        head, rest = doc.split(BEGIN) if BEGIN in doc else (doc.rstrip("\n") + "\n\n", END)
        tail = rest.split(END, 1)[1] if END in rest else ""
        DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}" + ("" if tail else "\n"))
    return payload


if __name__ == "__main__":
    main()
