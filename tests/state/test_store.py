"""One conformance suite for every state backend (DESIGN.md §6): the same
records come back, the same races have one winner, on SQLite and on a real
PostgreSQL server alike."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.state import (
    BreakGlassCase,
    CaRecord,
    CertificateRecord,
    Consultation,
    LockboxEntry,
    PendingAction,
    PrincipalState,
    SigningKeyRecord,
    StateStore,
    open_store,
)
from tests.postgres import Cluster

T0 = datetime(2026, 6, 15, 9, 30, 15, 123456, tzinfo=UTC)
S = timedelta(seconds=1)


def cert(serial: str, *, name: str = "api", issued: datetime = T0,
         status: str = "active") -> CertificateRecord:
    return CertificateRecord(serial, "ores", "service", name, "ca1", issued - S, issued + 30 * S,
                             "ab" * 32, "-----BEGIN CERTIFICATE-----", issued, status)


def case(case_id: str, *, created: datetime = T0, status: str = "pending") -> BreakGlassCase:
    return BreakGlassCase(case_id, "hes-admin", "ores/person/dave", "grid-ops", "fix",
                          "CHG-1", 1800.0, False, created, status)


def pending(pid: str, *, created: datetime = T0) -> PendingAction:
    return PendingAction(pid, "certs-issue", "ores/service/api", "ores/service/api", "{}",
                         "new service", "ores/person/alice", "iam", "two-admins", created,
                         created + 3600 * S)


def test_a_certificate_round_trips_exactly(store: StateStore) -> None:
    rec = replace(cert("0A1B"), replaces="09FF", retire_at=T0 + 60 * S)
    store.add_certificate(rec)
    assert store.certificate("0A1B") == rec
    assert store.certificate("0A1B") is not None
    got = store.certificate("0A1B")
    assert got is not None and got.not_before.utcoffset() == timedelta(0)
    assert store.certificate("FFFF") is None


def test_certificates_filter_by_principal_and_status_in_issue_order(store: StateStore) -> None:
    store.add_certificate(cert("02", issued=T0 + S))
    store.add_certificate(cert("01", issued=T0))
    store.add_certificate(cert("03", name="field-ops", issued=T0 + 2 * S))
    assert [c.serial for c in store.certificates()] == ["01", "02", "03"]
    assert [c.serial for c in store.certificates(principal=("ores", "service", "api"))] == \
        ["01", "02"]
    store.revoke_certificate("02", "keyCompromise", T0 + 5 * S)
    assert [c.serial for c in store.certificates(status="active")] == ["01", "03"]
    assert [c.serial for c in store.certificates(status="revoked")] == ["02"]


def test_a_certificate_is_revoked_once(store: StateStore) -> None:
    store.add_certificate(replace(cert("0A"), retire_at=T0 + S))
    assert store.revoke_certificate("0A", "keyCompromise", T0 + 9 * S) is True
    assert store.revoke_certificate("0A", "superseded", T0 + 10 * S) is False
    assert store.revoke_certificate("NOPE", "superseded", T0) is False
    got = store.certificate("0A")
    assert got is not None
    assert (got.status, got.revoke_reason, got.revoked_at, got.retire_at) == \
        ("revoked", "keyCompromise", T0 + 9 * S, None)


def test_retirements_fall_due_at_their_time(store: StateStore) -> None:
    store.add_certificate(cert("0A"))
    store.add_certificate(cert("0B"))
    store.schedule_retirement("0A", T0 + 10 * S)
    assert store.due_retirements(T0 + 9 * S) == []
    assert [c.serial for c in store.due_retirements(T0 + 10 * S)] == ["0A"]
    store.revoke_certificate("0A", "superseded", T0 + 10 * S)
    assert store.due_retirements(T0 + 20 * S) == []


def test_principal_states_replace_and_last_seen_only_moves_forward(store: StateStore) -> None:
    key = ("ores", "person", "bob")
    store.set_principal_state(PrincipalState(key, True, T0, "left", "ores/person/alice"))
    store.set_principal_state(PrincipalState(key, False, T0 + S, "back", "ores/person/alice"))
    assert store.principal_states() == [PrincipalState(key, False, T0 + S, "back",
                                                       "ores/person/alice")]
    store.record_last_seen({key: T0 + 5 * S})
    store.record_last_seen({key: T0 + 2 * S, ("ores", "service", "api"): T0})
    assert store.last_seen() == {key: T0 + 5 * S, ("ores", "service", "api"): T0}


def test_cas_and_their_status(store: StateStore) -> None:
    store.add_ca(CaRecord("ca2", "cert2", "key2", T0 + S))
    store.add_ca(CaRecord("ca1", "cert1", "key1", T0))
    assert [c.id for c in store.cas()] == ["ca1", "ca2"]
    store.set_ca_status("ca1", "retiring", T0 + 100 * S)
    assert store.cas()[0] == CaRecord("ca1", "cert1", "key1", T0, "retiring", T0 + 100 * S)


def test_crl_numbers_never_repeat_under_concurrency(store_url: str) -> None:
    # RFC 5280 §5.2.3: increasing; two writers (threads here, replicas in a
    # fleet) never get the same number.
    stores = [open_store(store_url) for _ in range(2)]
    got: list[int] = []
    lock = threading.Lock()

    def take(s: StateStore) -> None:
        for _ in range(25):
            n = s.next_crl_number()
            with lock:
                got.append(n)

    threads = [threading.Thread(target=take, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == list(range(1, 51))
    for s in stores:
        s.close()


def test_breakglass_cases_round_trip_and_filter(store: StateStore) -> None:
    a = case("c1")
    b = replace(case("c2", created=T0 + S), status="approved", approver="ores/person/bob",
                decided_at=T0 + 2 * S, emergency=True, rotated=True, review_status="pending")
    store.put_breakglass(b)
    store.put_breakglass(a)
    assert store.breakglass("c2") == b
    assert store.breakglass("nope") is None
    assert [c.id for c in store.breakglass_cases()] == ["c1", "c2"]
    assert store.breakglass_cases(status="approved") == [b]
    closed = replace(b, status="closed", closed_at=T0 + 9 * S, close_reason="checked in")
    store.put_breakglass(closed)
    assert store.breakglass("c2") == closed


def test_consultations_by_tenant_in_time_order(store: StateStore) -> None:
    later = Consultation("i2", T0 + S, "ores", "ores/service/api", "/clearing/x", "EAN",
                         "complaint", "ticket 7")
    first = replace(later, incident="i1", at=T0)
    other = replace(later, incident="i3", tenant="fluvius")
    for rec in (later, other, first):
        store.add_consultation(rec)
    assert store.consultations(tenant="ores") == [first, later]
    assert len(store.consultations()) == 3


def test_signing_keys_publish_and_go(store: StateStore) -> None:
    k2 = SigningKeyRecord("k2", "pem2", T0, T0 + 60 * S)
    k1 = SigningKeyRecord("k1", "pem1", T0, T0)
    store.add_signing_key(k2)
    store.add_signing_key(k1)
    assert store.signing_keys() == [k1, k2]
    store.set_unpublish("k1", T0 + 120 * S)
    assert store.signing_keys()[0].unpublish_at == T0 + 120 * S
    store.delete_signing_key("k1")
    assert store.signing_keys() == [k2]


def test_a_pending_action_is_decided_once(store: StateStore) -> None:
    item = pending("p1")
    store.put_pending(item)
    store.put_pending(pending("p0", created=T0 - S))
    assert store.pending("p1") == item
    assert [p.id for p in store.pending_actions()] == ["p0", "p1"]
    approved = replace(item, status="approved", approver="ores/person/carol",
                       decided_at=T0 + S, decision_reason="ok", result='{"serial": "0A"}')
    denied = replace(item, status="denied", approver="ores/person/dan", decided_at=T0 + S)
    # D6: two admins deciding at once: one wins, the other sees it was decided.
    assert store.move_pending("p1", "pending", approved) is True
    assert store.move_pending("p1", "pending", denied) is False
    assert store.pending("p1") == approved
    assert store.pending_actions(status="approved") == [approved]


def test_a_second_open_of_the_same_state_sees_the_same_records(store_url: str) -> None:
    first = open_store(store_url)
    first.add_certificate(cert("0A"))
    second = open_store(store_url)  # the schema is created once, not twice
    assert second.certificate("0A") == first.certificate("0A")
    first.close()
    second.close()


@pytest.mark.parametrize("url", ["mysql://x", "sqlite://relative", "file:///tmp/x"])
def test_an_unknown_state_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not a state URL"):
        open_store(url)


def test_the_change_number_moves_with_what_the_request_path_checks(store: StateStore) -> None:
    seq = store.change_seq()
    store.add_certificate(cert("0A"))
    store.add_consultation(Consultation("i1", T0, "ores", "p", "r", "x", "purpose", "j"))
    store.certificates()
    assert store.change_seq() == seq  # issuing, registering and reading change nothing checked
    steps = [
        lambda: store.revoke_certificate("0A", "keyCompromise", T0),
        lambda: store.set_principal_state(PrincipalState(("ores", "person", "bob"), True, T0,
                                                         "left", "alice")),
        lambda: store.add_ca(CaRecord("ca1", "c", "k", T0)),
        lambda: store.set_ca_status("ca1", "retiring", T0),
        lambda: store.add_signing_key(SigningKeyRecord("k1", "pem", T0, T0)),
        lambda: store.set_unpublish("k1", T0),
        lambda: store.delete_signing_key("k1"),
    ]
    for step in steps:
        before = store.change_seq()
        step()
        assert store.change_seq() > before
    before = store.change_seq()
    assert store.revoke_certificate("0A", "again", T0) is False
    assert store.change_seq() == before  # nothing changed, nothing announced


def test_another_writer_s_change_is_seen_through_the_number(store_url: str) -> None:
    # Two replicas on one state: what one revokes, the other sees move.
    mine, theirs = open_store(store_url), open_store(store_url)
    mine.add_certificate(cert("0A"))
    seen = mine.change_seq()
    theirs.revoke_certificate("0A", "keyCompromise", T0)
    assert mine.change_seq() > seen
    got = mine.certificate("0A")
    assert got is not None and got.status == "revoked"
    mine.close()
    theirs.close()


def test_published_crls_replace_the_last_and_move_the_change_number(store: StateStore) -> None:
    assert store.crls() == []
    before = store.change_seq()
    seq = store.publish_crls([("ca2", b"-----CRL two"), ("ca1", b"-----CRL one")])
    assert seq == store.change_seq() > before
    assert store.crls() == [("ca2", b"-----CRL two"), ("ca1", b"-----CRL one")]
    store.publish_crls([("ca1", b"-----CRL one, again")])
    assert store.crls() == [("ca1", b"-----CRL one, again")]  # ca2 retired: its CRL gone
    assert store.change_seq() == seq + 1


def test_another_replica_reads_the_crls_one_published(store_url: str) -> None:
    signer, follower = open_store(store_url), open_store(store_url)
    signer.publish_crls([("ca1", b"pem")])
    assert follower.crls() == [("ca1", b"pem")]
    signer.close()
    follower.close()


def test_postgresql_announces_every_change_on_the_state_channel(postgres: Cluster) -> None:
    # D8: replicas LISTEN and re-read at once; the payload is the new number.
    import psycopg

    url = postgres.new_database()
    store = open_store(url)
    listener = psycopg.connect(url, autocommit=True)
    listener.execute("LISTEN gateway_state")
    store.add_certificate(cert("0A"))  # not checked on the request path: no announcement
    store.revoke_certificate("0A", "keyCompromise", T0)
    seq_after_revoke = store.change_seq()
    store.publish_crls([("ca1", b"pem")])
    got = [n.payload for n in listener.notifies(timeout=2, stop_after=2)]
    assert got == [str(seq_after_revoke), str(store.change_seq())]
    listener.close()
    store.close()


def test_a_breakglass_case_moves_only_from_what_the_mover_read(store: StateStore) -> None:
    """The compare-and-set break-glass steps use (D6, D7): status, rotated
    flag and review status must still be what the mover read."""
    pending_case = case("c1")
    store.put_breakglass(pending_case)
    approved = replace(pending_case, status="approved", approver="ores/person/bob",
                       decided_at=T0 + S)
    denied = replace(pending_case, status="denied", approver="ores/person/carol",
                     decided_at=T0 + S)
    assert store.move_breakglass(pending_case, approved) is True
    assert store.move_breakglass(pending_case, denied) is False  # decided already
    assert store.breakglass("c1") == approved
    closed = replace(approved, status="closed", closed_at=T0 + 9 * S, close_reason="x")
    store.put_breakglass(closed)
    rotated = replace(closed, rotated=True)
    reviewed = replace(closed, review_status="done", reviewer="ores/person/bob")
    assert store.move_breakglass(closed, rotated) is True
    # Same status, but the flag moved since: a write from the old read would undo it.
    assert store.move_breakglass(closed, reviewed) is False
    assert store.move_breakglass(rotated, replace(reviewed, rotated=True)) is True
    assert store.breakglass("c1") == replace(reviewed, rotated=True)
    assert store.move_breakglass(case("nope"), case("nope", status="approved")) is False
    assert store.breakglass("nope") is None
    with pytest.raises(ValueError):
        store.move_breakglass(pending_case, case("c2"))


def test_a_breakglass_case_racing_on_many_connections_moves_once(store_url: str) -> None:
    first = open_store(store_url)
    first.put_breakglass(case("c1"))
    stores = [first, *(open_store(store_url) for _ in range(5))]
    start, wins = threading.Barrier(len(stores)), list[int]()

    def decide(i: int) -> None:
        before = stores[i].breakglass("c1")
        assert before is not None
        start.wait()
        if stores[i].move_breakglass(before, replace(before, status="approved",
                                                     approver=f"ores/person/a{i}")):
            wins.append(i)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(wins) == 1
    got = first.breakglass("c1")
    assert got is not None and got.approver == f"ores/person/a{wins[0]}"
    for s in stores:
        s.close()


def lockbox_entry(case_id: str, tenant: str, *, status: str = "pending",
                  created: datetime = T0) -> LockboxEntry:
    return LockboxEntry(case_id, tenant, "hes-admin", "ores/person/dave", "grid-ops", "fix",
                        "CHG-1", False, "approve", created, created + 3600 * S, "inc-1",
                        status)


def test_lockbox_entries_round_trip_and_filter(store: StateStore) -> None:
    """D7: one entry per case and reached tenant; a tenant reads its own."""
    a = replace(lockbox_entry("c1", "ores"), review_status="pending", emergency=True)
    b = lockbox_entry("c1", "fluvius", status="notified")
    c = lockbox_entry("c2", "ores", created=T0 + S)
    store.put_lockbox([a, b, c])
    assert store.lockbox("c1", "ores") == a
    got = store.lockbox("c1", "ores")
    assert got is not None and got.emergency is True and got.expires_at == T0 + 3600 * S
    assert store.lockbox("c1", "sibelga") is None
    assert store.lockbox_entries(case_id="c1") == [b, a]  # created, then tenant
    assert store.lockbox_entries(tenant="ores") == [a, c]
    assert store.lockbox_entries(case_id="c2", tenant="fluvius") == []
    assert len(store.lockbox_entries()) == 3


def test_a_lockbox_entry_moves_only_from_what_the_mover_read(store: StateStore) -> None:
    """One consent or denial when two approvers (or replicas) answer at once."""
    entry = lockbox_entry("c1", "ores")
    store.put_lockbox([entry])
    approved = replace(entry, status="approved", approver="ores/person/olga",
                       decided_at=T0 + S, decision_reason="ok")
    denied = replace(entry, status="denied", approver="ores/person/oscar", decided_at=T0 + S)
    assert store.move_lockbox(entry, approved) is True
    assert store.move_lockbox(entry, denied) is False
    assert store.lockbox("c1", "ores") == approved
    skipped = replace(lockbox_entry("c2", "ores", status="skipped"), review_status="pending")
    store.put_lockbox([skipped])
    reviewed = replace(skipped, review_status="done", reviewer="ores/person/olga",
                       reviewed_at=T0 + 2 * S, review_notes="fine")
    assert store.move_lockbox(skipped, reviewed) is True
    assert store.move_lockbox(skipped, reviewed) is False  # the review moved since
    assert store.lockbox("c2", "ores") == reviewed
    with pytest.raises(ValueError):
        store.move_lockbox(entry, lockbox_entry("c1", "fluvius"))


def test_a_version_4_state_gains_the_lockbox_table(store_url: str) -> None:
    """Schema 5 (D7): a state written before the lockbox (no table, version 4)
    is migrated when it is opened, on either backend."""
    store = open_store(store_url)
    store.close()
    if store_url.startswith("sqlite:///"):
        import sqlite3
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
            db.execute("DROP TABLE lockbox")
            db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        db.close()
    else:
        import psycopg
        with psycopg.connect(store_url, autocommit=True) as pg:
            pg.execute("DROP TABLE lockbox")
            pg.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    again = open_store(store_url)
    try:
        assert again.schema_version() == 5  # type: ignore[attr-defined]
        again.put_lockbox([lockbox_entry("c1", "ores")])
        assert again.lockbox("c1", "ores") == lockbox_entry("c1", "ores")
    finally:
        again.close()
