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
