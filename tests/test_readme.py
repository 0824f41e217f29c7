"""The README and docs show only what runs: every Python snippet in them is executed here, every link stays inside
the repository, and `import vaefast` stays light."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
SNIPPETS = [(page, index, code) for page in PAGES
            for index, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))]


def test_the_readme_is_short_and_has_python_snippets():
    assert len([s for s in SNIPPETS if s[0] == README]) >= 3
    assert len(README.read_text().splitlines()) <= 250


@pytest.mark.parametrize("page, index, code", SNIPPETS, ids=[f"{p.name}-{i}" for p, i, _ in SNIPPETS])
def test_python_snippet_runs(page, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets that train write their run folder here
    exec(compile(code, f"{page.name} python snippet {index}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_stay_in_the_repository(page):
    text = page.read_text()
    assert "../shared" not in text, f"{page.name} cites ../shared, which does not ship with the code"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert not re.match(r"[a-z]+://", target), f"{page.name} links outside the repository: {target}"
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{page.name}: broken link {target}"


def test_import_vaefast_does_not_load_the_compiler():
    """The drop-in loss user's path: `import vaefast` must not pull in torch._dynamo (seconds of import time)."""
    heavy = "('torch._dynamo', 'torch._inductor', 'triton')"
    code = f"import sys, vaefast; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
