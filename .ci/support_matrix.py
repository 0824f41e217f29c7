"""The README's support line, checked against what CI actually ran.

    python .ci/support_matrix.py floor                  the oldest torch pyproject.toml declares (torch>=X)
    python .ci/support_matrix.py record OUT.json        the versions in the running environment
    python .ci/support_matrix.py check NEWEST OLDEST    fail unless README.md's support line says exactly these

The line is regenerated from the records, so a stale README fails CI with the line to paste instead.
"""

from __future__ import annotations

import json
import platform
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE_PREFIX = "Tested by CI (`.ci/run`):"
PACKAGES = ("torch", "triton", "nvidia-dali-cuda130")


def torch_floor() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in dependencies:
        match = re.fullmatch(r"torch\s*>=\s*([0-9][0-9.]*)", requirement.strip())
        if match:
            return match.group(1)
    sys.exit("pyproject.toml must declare torch as `torch>=X` so that CI can test the floor X")


def record(out: str) -> None:
    versions = {"python": ".".join(platform.python_version_tuple()[:2])}
    for name in PACKAGES:
        versions[name] = metadata.version(name).split("+")[0]
    Path(out).write_text(json.dumps(versions))


def _environment(run: dict) -> str:
    return ", ".join(f"{name} {run[name]}" for name in PACKAGES)


def support_line(newest: dict, oldest: dict) -> str:
    pythons = " and ".join(dict.fromkeys(run["python"] for run in (newest, oldest)))
    return (f"{LINE_PREFIX} CPU only, Python {pythons}: {_environment(newest)} (what pip resolves); "
            f"{_environment(oldest)} (the oldest torch declared).")


def check(newest_path: str, oldest_path: str) -> None:
    expected = support_line(json.loads(Path(newest_path).read_text()), json.loads(Path(oldest_path).read_text()))
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(LINE_PREFIX)]
    if lines != [expected]:
        found = "\n".join(lines) or "(no such line)"
        sys.exit(f"README.md's support line is stale.\nfound:\n{found}\nCI ran:\n{expected}")
    print(f"support line matches what CI ran: {expected}")


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["help"]
    if command == "floor" and not args:
        print(torch_floor())
    elif command == "record" and len(args) == 1:
        record(args[0])
    elif command == "check" and len(args) == 2:
        check(*args)
    else:
        sys.exit(__doc__)
