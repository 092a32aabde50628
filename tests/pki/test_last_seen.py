"""The last use of each principal (D8: the access reviews list who has not
used a credential) is noted on the request path and written by the
maintenance round off the event loop: a use is neither lost to a failed
commit nor missing from the review while it is being written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.metrics import GatewayMetrics
from gateway.pki import Credentials
from gateway.state import PrincipalKey, open_store
from gateway.state._sqlite import SqliteStore

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
API: PrincipalKey = ("ores", "service", "api")
PORTAL: PrincipalKey = ("ores", "service", "customer-portal")


class FailingOnce(SqliteStore):
    """A real SQLite store whose next commit of last uses fails (a full disk)."""

    fail = True

    def record_last_seen(self, seen: dict[PrincipalKey, datetime]) -> None:
        if self.fail:
            self.fail = False
            raise OSError(28, "No space left on device")
        super().record_last_seen(seen)


def credentials(store: Any, clock: list[datetime]) -> Credentials:
    return Credentials(store=store, trust_domain="gw.test", registry=lambda: None,  # type: ignore[arg-type,return-value]
                       keyring=None, metrics=GatewayMetrics(), audit=None,  # type: ignore[arg-type]
                       server_cert=Path("-"), server_key=Path("-"), trust_bundle=Path("-"),
                       clock=lambda: clock[0])


def test_uses_are_taken_on_the_loop_and_written_by_the_flush(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    clock = [T0]
    creds = credentials(store, clock)
    assert creds.check("01", API) is None  # a request: its use is noted
    seen = creds.take_seen()
    assert seen == {API: T0}
    assert creds.take_seen() == {}  # taken once
    assert store.last_seen() == {}  # not written yet ...
    assert creds._flushing == {API: T0}  # ... but still shown as being written
    clock[0] = T0 + timedelta(seconds=1)
    creds.check("01", API)  # a use while the write runs
    creds.flush_seen(seen)
    assert store.last_seen() == {API: T0}
    assert creds._flushing == {}
    assert creds.take_seen() == {API: T0 + timedelta(seconds=1)}  # the later use is kept


def test_a_failed_write_puts_the_uses_back_for_the_next_round(tmp_path: Path) -> None:
    store = FailingOnce(tmp_path / "state.db")
    clock = [T0]
    creds = credentials(store, clock)
    creds.check("01", API)
    seen = creds.take_seen()
    clock[0] = T0 + timedelta(seconds=1)
    creds.check("02", PORTAL)  # noted while the failing write ran
    with pytest.raises(OSError):
        creds.flush_seen(seen)
    assert store.last_seen() == {}
    again = creds.take_seen()
    assert again == {API: T0, PORTAL: T0 + timedelta(seconds=1)}  # nothing lost
    creds.flush_seen(again)
    assert store.last_seen() == again


def test_maintain_leaves_the_uses_to_the_flush_off_the_loop(tmp_path: Path) -> None:
    """maintain() runs on the event loop: it never commits the uses itself
    (a commit and an fdatasync there stalled every request twice a second
    under load); they wait, whole, for the server's flush in a thread."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    creds = credentials(store, [T0])
    creds.leads = lambda: False  # a data replica: no control duties, still its uses
    creds.keyring = type("K", (), {"age_seconds": lambda self, now: 0.0})()  # type: ignore[assignment]
    creds.check("01", API)
    creds.maintain()
    assert store.last_seen() == {}
    creds.flush_seen(creds.take_seen())
    assert store.last_seen() == {API: T0}
