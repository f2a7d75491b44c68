"""House style, checked like everything else: ruff's lint rules and its formatter (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args):
    out = subprocess.run([sys.executable, "-m", "ruff", *args, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, f"ruff {' '.join(args)} (fix with: ruff check --fix . && ruff format .)\n{out.stdout}{out.stderr}"


def long_functions_without_a_reason(limit: int = 60) -> list[str]:
    """Functions in the two planes over ``limit`` lines whose body has no ``# Long because …`` comment."""
    import ast

    out = []
    for package in (ROOT / "operator" / "abtest_operator", ROOT / "evaluator" / "abtest_evaluator"):
        for path in sorted(package.rglob("*.py")):
            source = path.read_text()
            lines = source.splitlines()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > limit:
                    body = lines[node.lineno - 1 : node.end_lineno]
                    if not any(line.strip().startswith("# Long because") for line in body):
                        out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return out


def test_no_function_is_over_60_lines_without_saying_why():
    offenders = long_functions_without_a_reason()
    assert not offenders, "split these, or say why they must be long in a '# Long because …' comment: " + ", ".join(offenders)
