"""Least privilege for the data plane's database role (gateway.state
.data_plane_grants), on a real PostgreSQL: with only those grants a replica
starts and does its work (reads what requests are checked against, writes
its own traces), and it can neither read a CA key nor change what the
control plane decides, nor rewrite a shipped audit line (D6, D10)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from gateway.push import PostgresOutbox
from gateway.state import (
    AuditTables,
    CaRecord,
    Consultation,
    Heartbeats,
    PostgresStore,
    PrincipalState,
    RelationPublication,
    SigningKeyRecord,
    data_plane_grants,
    open_store,
)
from gateway.vault import MasterKeys, open_vault
from tests.postgres import Cluster
from tests.state.test_store import cert, lockbox_entry

T0 = datetime(2026, 6, 15, tzinfo=UTC)


MASTER = MasterKeys.generate()
OUTBOX_KEY = bytes(32)


@pytest.fixture()
def urls(postgres: Cluster, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(owner URL, data-plane role URL) of a fresh database whose schema the
    owner (the control plane) made."""
    owner_url = postgres.new_database()
    owner = PostgresStore(owner_url)
    owner.add_ca(CaRecord("ca1", "-----CERT", "-----PRIVATE KEY", T0))
    owner.add_certificate(cert("0A"))
    owner.publish_crls([("ca1", b"-----CRL")])
    for made in (Heartbeats(owner_url), AuditTables(owner_url),
                 RelationPublication(owner_url)):
        made.close()
    publication = RelationPublication(owner_url)
    publication.publish("a" * 64, b"snapshot", 1)
    publication.close()
    vault = open_vault(owner_url, tmp_path / "unused.db", MASTER)
    vault.put("upstream/hes/token", b"s3cret", kind="upstream-token")
    vault.close()
    PostgresOutbox(owner_url, OUTBOX_KEY, owner="control-0").close()
    owner.put_lockbox([lockbox_entry("c1", "ores")])  # D7: opened by the control plane
    owner.close()
    role = "gw_data_" + uuid.uuid4().hex[:8]
    with psycopg.connect(owner_url, autocommit=True) as db:
        db.execute(f"CREATE ROLE {role} LOGIN")  # a generated identifier
        db.execute(data_plane_grants(role).encode())
    database = owner_url.split("@/", 1)[1].split("?")[0]
    # (The role stays in the session's throwaway cluster.)
    yield owner_url, f"postgresql://{role}@/{database}?host={postgres.socket_dir}"


def test_a_data_replica_starts_and_works_with_the_grants_alone(
        urls: tuple[str, str]) -> None:
    _, data_url = urls
    store = open_store(data_url)  # the schema is there: nothing to create
    assert [c.serial for c in store.certificates()] == ["0A"]
    assert store.principal_states() == []
    assert store.crls() == [("ca1", b"-----CRL")]
    assert store.signing_keys() == []
    assert store.change_seq() >= 1
    cas = store.ca_certificates()
    assert [(c.id, c.cert_pem, c.key_pem) for c in cas] == [("ca1", "-----CERT", "")]
    store.record_last_seen({("ores", "service", "api"): T0})
    store.add_consultation(Consultation("i1", T0, "ores", "p", "r", "x", "purpose", "j"))
    # D7: a reached tenant's approver consents on the data plane.
    (entry,) = store.lockbox_entries(tenant="ores")
    assert store.move_lockbox(entry, replace(entry, status="approved",
                                             approver="ores/person/olga"))
    store.close()
    hb = Heartbeats(data_url)
    hb.beat(replica_id="data-0", role="data", host="h", pid=1, data=None, ops=None,
            admin=None, draining=False, leader=False)
    assert hb.live_data_replicas(5) == 1
    hb.forget("data-0")
    hb.close()
    audit = AuditTables(data_url)
    audit.ship("data-0", [(1, b'{"seq":1}\n')])
    audit.publish_key("data-0", "audit-1", "{}")
    assert audit.shipped_seq("data-0") == 1
    audit.close()
    pub = RelationPublication(data_url)
    pointer = pub.pointer()
    assert pointer is not None and pub.fetch(pointer.digest) == b"snapshot"
    pub.close()
    vault = open_vault(data_url, Path("unused.db"), MASTER)  # opening writes nothing
    assert vault.get("upstream/hes/token") == b"s3cret"
    with pytest.raises(errors.InsufficientPrivilege):  # the control plane puts and rotates
        vault.put("upstream/hes/token", b"mine", kind="upstream-token")
    vault.close()
    outbox = PostgresOutbox(data_url, OUTBOX_KEY, owner="data-0")
    outbox.enqueue(batch_id="B1", source="hes-operator", fingerprint="f", received=1,
                   quarantined=0, parts=[("hes-operator/B1/ores", "ores", "hes-readings",
                                          [{"meter": "M1"}])])
    (part,) = outbox.claim("ores")
    assert outbox.acknowledged(part.id, part.lease)
    # Breach notifications: queued on the response path, read by their owner.
    assert outbox.enqueue_notifications(incident="inc-1", source="gateway:breach",
                                        notices=[("pidpa", '{"incident": "inc-1"}', None)])
    assert outbox.notifications("pidpa", 10) == ['{"incident": "inc-1"}']
    outbox.close()


@pytest.mark.parametrize("what", [
    "read a CA key", "revoke", "disable a principal", "add a CA", "publish CRLs",
    "add a signing key", "rewrite an audit line", "delete an audit line",
    "publish relations", "approve a pending action", "read break-glass cases",
    "open a lockbox entry",
])
def test_the_data_plane_role_cannot(urls: tuple[str, str], what: str) -> None:
    _, data_url = urls
    store = open_store(data_url)
    actions: dict[str, Callable[[], object]] = {
        "read a CA key": store.cas,
        "revoke": lambda: store.revoke_certificate("0A", "keyCompromise", T0),
        "disable a principal": lambda: store.set_principal_state(
            PrincipalState(("ores", "person", "bob"), True, T0, "left", "x")),
        "add a CA": lambda: store.add_ca(CaRecord("ca2", "c", "k", T0)),
        "publish CRLs": lambda: store.publish_crls([("ca1", b"forged")]),
        "add a signing key": lambda: store.add_signing_key(
            SigningKeyRecord("k", "pem", T0, T0)),
        "rewrite an audit line": lambda: _sql(
            data_url, "UPDATE audit_lines SET line = 'x'"),
        "delete an audit line": lambda: _sql(data_url, "DELETE FROM audit_lines"),
        "publish relations": lambda: _publish(data_url),
        "approve a pending action": lambda: store.pending_actions(),
        "read break-glass cases": lambda: store.breakglass_cases(),
        "open a lockbox entry": lambda: store.put_lockbox([lockbox_entry("c9", "ores")]),
    }
    with pytest.raises(errors.InsufficientPrivilege):
        actions[what]()
    store.close()


def _publish(url: str) -> None:
    pub = RelationPublication(url)
    try:
        pub.publish("b" * 64, b"forged", 1)
    finally:
        pub.close()


def _sql(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(sql.encode())


def test_a_role_name_is_checked_before_it_goes_into_sql() -> None:
    with pytest.raises(ValueError, match="lowercase letters"):
        data_plane_grants("data; DROP TABLE cas")


def test_gateway_state_data_plane_grants_prints_the_sql() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "gateway", "state", "data-plane-grants",
                          "--role", "gw_data"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0 and out.stdout == data_plane_grants("gw_data")
    assert "key_pem" not in out.stdout  # the CA keys are never granted
    bad = subprocess.run([sys.executable, "-m", "gateway", "state", "data-plane-grants",
                          "--role", "x;y"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2 and "lowercase letters" in bad.stderr
