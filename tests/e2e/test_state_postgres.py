"""The gateway on PostgreSQL state (``[state] url``): the credential
lifecycle works unchanged, and what it decides is in the shared database,
where other replicas of a fleet will read it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from gateway.state import open_store
from tests.postgres import Cluster

from .conftest import Client, start_stack
from .test_credentials import admin, ctx_for, meter_of, new_identity


def test_a_revocation_on_postgresql_state_refuses_the_open_connection(
        tmp_path: Path, postgres: Cluster) -> None:
    url = postgres.new_database()
    gw = start_stack(tmp_path, extra_config=f"""
        [state]
        url = "{url}"
        """)
    try:
        cert, key, doc = new_identity(gw, tmp_path, "sibelga")
        client = Client(gw.port, ctx_for(gw, cert, key))
        path = f"/hes/meters/{meter_of(gw, 'sibelga')}"
        assert client.get(path).status == 200
        assert admin(gw, "POST", f"/admin/certs/{doc['serial']}/revoke",
                     {"reason": "laptop stolen", "code": "key-compromise"}).status == 200
        assert client.get(path).status == 403  # D8: on the connection already open
        client.close()
    finally:
        gw.stop()
    with psycopg.connect(url) as db:
        row = db.execute("SELECT status, revoke_reason FROM certificates WHERE serial = %s",
                         (doc["serial"],)).fetchone()
        cas = db.execute("SELECT count(*) FROM cas").fetchone()
    assert row == ("revoked", "key-compromise")  # the RFC 5280 reason code
    assert cas is not None and cas[0] >= 1  # the CA the gateway bootstrapped lives there too


def test_a_revocation_written_by_another_replica_reaches_this_one(
        tmp_path: Path, postgres: Cluster) -> None:
    """D8 across a fleet: a certificate revoked in the shared state by someone
    else (another replica, the control plane) is refused by this gateway on an
    already-open connection within a maintenance cycle or two."""
    url = postgres.new_database()
    gw = start_stack(tmp_path, extra_config=f"""
        [state]
        url = "{url}"
        """)
    try:
        cert, key, doc = new_identity(gw, tmp_path, "sibelga")
        client = Client(gw.port, ctx_for(gw, cert, key))
        path = f"/hes/meters/{meter_of(gw, 'sibelga')}"
        statuses = [client.get(path).status]
        other = open_store(url)  # another replica's view of the same state
        assert other.revoke_certificate(doc["serial"], "keyCompromise",
                                        datetime.now(UTC)) is True
        other.close()
        deadline = time.monotonic() + 5  # bounded: the gateway follows every 0.5 s
        while time.monotonic() < deadline and statuses[-1] != 403:
            time.sleep(0.1)
            statuses.append(client.get(path).status)
        client.close()
        assert statuses[0] == 200 and statuses[-1] == 403, statuses
    finally:
        gw.stop()


def test_shared_state_out_of_reach_fails_closed_and_recovers(
        tmp_path: Path, postgres: Cluster) -> None:
    """D8: a replica that cannot read the shared state for longer than its bound
    might miss a revocation, so it refuses (503, `state-stale`) and says so on
    /readyz and in gateway_state_staleness_seconds; it serves again once the
    state is back."""
    url = postgres.new_database()
    name = urlsplit(url).path.lstrip("/")
    gw = start_stack(tmp_path, extra_config=f"""
        [state]
        url = "{url}"
        max_staleness_s = 1
        """)

    def cut(allowed: bool) -> None:
        with psycopg.connect(postgres.url(), autocommit=True) as db:
            db.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allowed).lower()}")
            if not allowed:
                db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = %s", (name,))

    def until(status: int) -> list[int]:
        statuses: list[int] = []
        deadline = time.monotonic() + 10  # bounded
        while time.monotonic() < deadline:
            statuses.append(gw.client("ores").get("/hes/meters").status)
            if statuses[-1] == status:
                break
            time.sleep(0.2)
        return statuses

    try:
        assert gw.client("ores").get("/hes/meters").status == 200
        cut(allowed=False)
        assert until(503)[-1] == 503
        ready = gw.ops("/readyz")
        assert ready.status == 503 and ready.json["shedding"] == "state-stale"
        assert gw.metric("gateway_state_staleness_seconds") > 1
        stale = [e for e in gw.audit_events() if e.get("reason") == "state-stale"]
        assert stale and stale[-1]["status"] == 503
        cut(allowed=True)
        assert until(200)[-1] == 200
        assert gw.ops("/readyz").status == 200
    finally:
        cut(allowed=True)
        gw.stop()
