"""The edge conformance suite (conformance/run.sh) as one test.

``conformance/run.sh`` installs sslyze (own venv), slowhttptest and openssl
when missing, starts the demo stack on kernel-chosen ports and checks it:
Mozilla "intermediate" on the data and admin planes, no HTTP byte without a
client certificate, and slow clients cut off. See the script's header.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_conformance_suite_passes() -> None:
    try:
        proc = subprocess.run(["bash", str(REPO / "conformance" / "run.sh")], cwd=REPO,
                              capture_output=True, text=True, timeout=840, check=False)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
        pytest.fail(f"conformance/run.sh did not finish in {exc.timeout} s\n{out or ''}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"conformance/run.sh exited {proc.returncode}\n{output}"
    assert "0 failed" in proc.stdout, output
