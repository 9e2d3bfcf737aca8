"""The package stays lint-clean and type-checks under mypy --strict (see pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


@pytest.mark.slow
def test_mypy_strict() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_and_format() -> None:
    lint = run("ruff", "check", "service", "tests", "loadtests", "scripts")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run("ruff", "format", "--check", "service", "tests", "loadtests", "scripts")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


# What would slow every request down if left on after profiling: tracing and profiling hooks,
# the profilers and debuggers themselves, and asyncio's debug mode.
_HOOK_CALLS = {"settrace", "setprofile", "set_debug", "breakpoint", "set_trace"}
_HOOK_MODULES = {"cProfile", "profile", "pstats", "tracemalloc", "pdb", "yappi", "pyinstrument"}


def test_no_profiling_or_debug_hook_is_left_in_the_server() -> None:
    import ast

    found = []
    for path in sorted((ROOT / "service" / "inscale").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                found += [f"{where} imports {n}" for n in names if n.split(".")[0] in _HOOK_MODULES]
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in _HOOK_CALLS:
                    found.append(f"{where} calls {name}")
    assert not found, "\n".join(found)
