"""deploy/ (Prometheus config, alert rules and their unit tests, Grafana
dashboard) passes `bash deploy/check.sh`, which installs promtool if needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_deploy_check_passes() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "deploy/check.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, (
        f"deploy/check.sh exited {proc.returncode}\n--- stdout\n{proc.stdout}"
        f"\n--- stderr\n{proc.stderr}")
