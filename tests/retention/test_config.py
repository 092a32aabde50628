"""D8, D10: the [retention] keys, their documented defaults, and the floor
that keeps a leaver and a consultation in view of one six-monthly review."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, RetentionConfig
from tests.config.test_schema import edited

REPO = Path(__file__).resolve().parents[2]


def test_the_defaults_are_the_documented_ones() -> None:
    config = GatewayConfig.from_toml(REPO / "deploy" / "gateway.example.toml")
    assert config.retention == RetentionConfig(30.0, 400.0, 610.0, 400.0, 3600.0)
    reference = (REPO / "docs" / "configuration.md").read_text()
    assert "| `consultation_register_days` | number >= 183 | `610` | days |" in reference


@pytest.mark.parametrize("key", ["disabled_principal_days", "consultation_register_days",
                                 "notification_days"])
def test_a_period_shorter_than_a_six_monthly_review_is_refused(tmp_path: Path,
                                                               key: str) -> None:
    path = edited(tmp_path, "[retention]\n", f"[retention]\n{key} = 182\n")
    text = path.read_text()
    path.write_text(text.replace(f"\n{key} = 400 ", "\n# ").replace(f"\n{key} = 610 ", "\n# "))
    done = subprocess.run([sys.executable, "-m", "gateway", "config", "check", "--config",
                           str(path)], capture_output=True, text=True, check=False,
                          timeout=60)
    assert done.returncode == 2, done.stdout
    assert f"retention.{key}: must be a number >= 183" in done.stderr


def test_a_dead_letter_period_must_be_positive(tmp_path: Path) -> None:
    path = edited(tmp_path, "dead_letter_payload_days = 30 ", "dead_letter_payload_days = 0 ")
    done = subprocess.run([sys.executable, "-m", "gateway", "config", "check", "--config",
                           str(path)], capture_output=True, text=True, check=False,
                          timeout=60)
    assert done.returncode == 2 and "retention.dead_letter_payload_days" in done.stderr
