"""The gateway on PostgreSQL state (``[state] url``): the credential
lifecycle works unchanged, and what it decides is in the shared database,
where other replicas of a fleet will read it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

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
