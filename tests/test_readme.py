"""The README shows only what runs: every Python snippet in it is executed here, and `import vaefast` stays light."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_python_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets that train write their run folder here
    exec(compile(SNIPPETS[index], f"README.md python snippet {index}", "exec"), {"__name__": "__readme__"})


def test_import_vaefast_does_not_load_the_compiler():
    """The drop-in loss user's path: `import vaefast` must not pull in torch._dynamo (seconds of import time)."""
    heavy = "('torch._dynamo', 'torch._inductor', 'triton')"
    code = f"import sys, vaefast; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
