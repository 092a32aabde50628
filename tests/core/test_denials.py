"""DenialDetector: repeated denials from one principal raise one SOC alert per
cooldown, on a frozen clock; memory stays bounded (D12)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.denials import DenialDetector

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)


def deny(det: DenialDetector, principal: str, times: int, start: datetime,
         step: timedelta = SEC) -> list[bool]:
    return [det.observe(principal, True, start + i * step) for i in range(times)]


def test_alert_exactly_on_the_denial_that_reaches_the_threshold() -> None:
    det = DenialDetector(threshold=5, window=timedelta(minutes=1))
    assert deny(det, "lumen/api", 5, NOW) == [False, False, False, False, True]


def test_denials_spread_wider_than_the_window_never_alert() -> None:
    det = DenialDetector(threshold=3, window=timedelta(seconds=10))
    # One every 5 s: at most two in any 10 s window (the one 10 s old is out).
    assert not any(deny(det, "p", 50, NOW, 5 * SEC))


def test_window_edge_is_exclusive_of_the_oldest_instant() -> None:
    det = DenialDetector(threshold=2, window=timedelta(seconds=10))
    assert not det.observe("p", True, NOW)
    assert not det.observe("p", True, NOW + 10 * SEC)  # NOW is just out of the window
    assert det.observe("p", True, NOW + 19 * SEC)


def test_allowed_requests_neither_count_nor_reset() -> None:
    det = DenialDetector(threshold=3)
    results = []
    for i in range(3):
        results.append(det.observe("p", True, NOW + i * SEC))
        assert not det.observe("p", False, NOW + i * SEC)
    assert results == [False, False, True]
    assert not any(det.observe("q", False, NOW) for _ in range(100))
    assert len(det) == 1  # allowed requests create no state


def test_principals_are_counted_separately() -> None:
    det = DenialDetector(threshold=3)
    out = [det.observe(p, True, NOW + i * SEC) for i in range(2) for p in ("a", "b", "c")]
    assert not any(out)
    assert det.observe("b", True, NOW + 3 * SEC)
    assert not det.observe("d", True, NOW + 3 * SEC)


def test_cooldown_suppresses_repeats_then_alerts_again_while_the_flood_goes_on() -> None:
    det = DenialDetector(threshold=3, window=timedelta(minutes=1),
                         cooldown=timedelta(minutes=10))
    alerts = [NOW + i * SEC for i, hit in enumerate(deny(det, "p", 1200, NOW)) if hit]
    # One denial per second for 20 minutes: alerts at 2 s, then every 10 minutes.
    assert alerts == [NOW + 2 * SEC, NOW + 2 * SEC + timedelta(minutes=10)]


def test_after_cooldown_a_new_burst_must_reach_the_threshold_again() -> None:
    det = DenialDetector(threshold=3, window=timedelta(minutes=1),
                         cooldown=timedelta(minutes=10))
    assert deny(det, "p", 3, NOW) == [False, False, True]
    later = NOW + timedelta(hours=1)
    assert deny(det, "p", 3, later) == [False, False, True]


def test_a_zero_cooldown_alerts_on_every_denial_at_or_over_the_threshold() -> None:
    det = DenialDetector(threshold=2, cooldown=timedelta(0))
    assert deny(det, "p", 4, NOW) == [False, True, True, True]


def test_memory_bound_per_principal_and_on_principals() -> None:
    det = DenialDetector(threshold=4, max_principals=100)
    deny(det, "flood", 10_000, NOW, timedelta(milliseconds=1))
    assert len(det._tracks["flood"].denials) == 4
    for i in range(1_000):
        det.observe(f"p{i}", True, NOW)
    assert len(det) == 100
    assert "flood" not in det._tracks and "p0" not in det._tracks and "p999" in det._tracks


def test_eviction_is_least_recently_denied_first() -> None:
    det = DenialDetector(threshold=3, max_principals=2)
    det.observe("a", True, NOW)
    det.observe("b", True, NOW)
    det.observe("a", True, NOW + SEC)  # a is now the most recent
    det.observe("c", True, NOW + SEC)  # evicts b
    assert set(det._tracks) == {"a", "c"}
    assert det.observe("a", True, NOW + 2 * SEC)  # a kept its two earlier denials


@pytest.mark.parametrize("kwargs", [
    {"threshold": 0}, {"window": timedelta(0)}, {"cooldown": -SEC}, {"max_principals": 0},
])
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DenialDetector(**kwargs)  # type: ignore[arg-type]


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        DenialDetector().observe("p", True, datetime(2026, 6, 15, 12, 0))


def test_detector_imports_no_io_modules() -> None:
    code = (
        "import sys\n"
        "import gateway.core.denials\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'asyncio', 'ssl', "
        "'socket')]\n"
        "print(','.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"denials imported I/O modules: {proc.stdout}{proc.stderr}"


def test_the_smallest_settings_are_valid_and_work() -> None:
    """threshold 1 alerts on the first denial; one tracked principal is enough."""
    now = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
    d = DenialDetector(threshold=1, cooldown=timedelta(0), max_principals=1)
    assert d.observe("a", True, now) and d.observe("b", True, now)
    assert len(d) == 1  # "a" was evicted for "b"


@pytest.mark.parametrize("kwargs,names", [
    ({"threshold": 0}, "threshold"), ({"window": timedelta(0)}, "window"),
    ({"cooldown": timedelta(seconds=-1)}, "cooldown"), ({"max_principals": 0}, "max_principals"),
])
def test_a_bad_setting_is_named_in_the_error(kwargs: dict[str, object], names: str) -> None:
    with pytest.raises(ValueError, match=f"^{names} must"):
        DenialDetector(**kwargs)  # type: ignore[arg-type]
