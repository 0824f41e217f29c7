"""The package's shape: imports run one way (no circle, nothing imports a layer above it), every option lives
once, and the files stay small enough to read."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vaefast"

# Lowest first. A module may import its own layer and those below it, never one above.
LAYERS = [
    {"vaefast.config", "vaefast.native", "vaefast.instrument"},
    {"vaefast.ops"},
    {"vaefast.integrations", "vaefast.checkpoint", "vaefast.plan", "vaefast.data"},
    {"vaefast.models"},
    {"vaefast.eval"},
    {"vaefast.train"},
    {"vaefast.perf"},
    {"vaefast", "vaefast.cli", "vaefast.__main__"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the vaefast modules it imports anywhere in its file (lazy imports inside functions count)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule; `from pkg import name` imports pkg.
                subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                candidates = subs if len(subs) == len(node.names) else [base, *subs]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def _layer(module: str) -> int:
    for depth in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:depth])
        for index, layer in enumerate(LAYERS):
            if prefix in layer:
                return index
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: place it")


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_upward_import():
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
              for a, targets in import_graph().items() for b in targets if _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a fake package with both faults."""
    fake = tmp_path / "vaefast"
    (fake / "ops").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "ops" / "__init__.py").write_text("from .a import x\n")
    (fake / "ops" / "a.py").write_text("def f():\n    from .b import y\n")
    (fake / "ops" / "b.py").write_text("from .a import f\nfrom ..train import t\n")
    (fake / "train.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = import_graph()
    assert "vaefast.ops.b" in graph["vaefast.ops.a"] and "vaefast.ops.a" in graph["vaefast.ops.b"]
    assert _layer("vaefast.train") > _layer("vaefast.ops.b") and "vaefast.train" in graph["vaefast.ops.b"]
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circle()
    with pytest.raises(AssertionError, match="vaefast.ops.b .* imports vaefast.train"):
        test_no_upward_import()


def test_files_stay_small():
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in lengths.items() if n > 400}
    assert not long, f"package files over 400 lines: {long}"
    trainer = len((PACKAGE / "train" / "trainer.py").read_text().splitlines())
    assert trainer <= 300, f"vaefast/train/trainer.py has {trainer} lines (at most 300: move a concern out)"


def test_no_function_in_the_trainer_is_over_40_lines():
    tree = ast.parse((PACKAGE / "train" / "trainer.py").read_text())
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 40]
    assert not long, long


def test_every_option_has_exactly_one_flag_and_a_row_in_the_docs():
    from vaefast.cli import build_parser
    from vaefast.config import SECTIONS
    from vaefast.config.docs import options_markdown
    from vaefast.config.options import option_key

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = [opt for action in train._actions for opt in action.option_strings if opt.startswith("--")]
    docs = (PACKAGE.parent / "docs" / "options.md").read_text()
    for section in SECTIONS:
        for f in dataclasses.fields(section):
            flag = "--" + option_key(f).replace("_", "-")
            assert flags.count(flag) == 1, f"{section.name}.{f.name}: {flags.count(flag)} flags {flag}"
            assert f"| `{flag}` | `{f.name}` |" in docs, f"docs/options.md has no row for {flag}"
    assert docs == options_markdown(), "docs/options.md is stale: python -m vaefast.config.docs docs/options.md"


def test_help_imports_no_compiler_or_heavy_integration():
    """`vaefast --help` and `vaefast train --help` answer without torch._dynamo, triton, DALI or diffusers."""
    code = ("import sys, contextlib, io\nfrom vaefast.cli import main\n"
            "for argv in (['--help'], ['train', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "heavy = ('torch._dynamo', 'triton', 'nvidia.dali', 'diffusers', 'torch.utils.tensorboard')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('triton', 'diffusers') or m in heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_trainer_imports_no_compiler_until_it_compiles():
    """An eager run (the CPU default) never pays for torch._dynamo's import (over a second)."""
    code = ("import sys, vaefast.train, vaefast.eval.report, vaefast.cli\n"
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor', 'triton') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
