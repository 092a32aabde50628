"""ruff (gateway/, tests/ and bench/) and mypy (strict on gateway/) are
part of the suite: CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.lint
@pytest.mark.timeout(300)
@pytest.mark.parametrize("tool", [["ruff", "check", "gateway", "tests", "bench"], ["mypy"]])
def test_tool_is_clean(tool: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", *tool], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
