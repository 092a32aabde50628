"""The push outbox (D5, D10) on both backends, and the competition of a
fleet's replicas for its parts on PostgreSQL: claims under leases, fencing,
at-least-once delivery under one Idempotency-Key per part."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from gateway.push import Outbox, RetryPolicy
from tests.postgres import Cluster
from tests.push.conftest import KEY, Clock, OpenOutbox

RETRY = RetryPolicy(max_attempts=3)


def push(box: Outbox, batch: str, tenants: dict[str, int], source: str = "hes-operator"
         ) -> None:
    box.enqueue(batch_id=batch, source=source, fingerprint=f"fp-{batch}", received=9,
                quarantined=0,
                parts=[(f"{source}/{batch}/{t}", t, "hes-readings",
                        [{"meter": f"M{i}", "value": i} for i in range(n)])
                       for t, n in tenants.items()])


def test_a_batch_is_stored_whole_and_its_parts_are_due(box: Outbox) -> None:
    push(box, "B1", {"ores": 2, "fluvius": 1})
    assert box.batch("B1", "hes-operator")["fingerprint"] == "fp-B1"  # type: ignore[index]
    assert box.batch("B1", "other-system") is None  # D1: another source's namespace
    assert box.part_of("hes-operator", "B1", "ores") == ("hes-operator/B1/ores", "pending")
    (due,) = box.due("ores")
    assert (due.records, due.kind, due.source) == (2, "hes-readings", "hes-operator")
    assert box.payload(due) == [{"meter": "M0", "value": 0}, {"meter": "M1", "value": 1}]
    assert box.pending_records("ores") == 2 and box.pending_records("pidpa") == 0
    assert sorted(box.tenants_pending()) == ["fluvius", "ores"]
    assert box.stats()["ores"][0] == 1


def test_a_delivered_part_stored_again_gets_no_payload_back(box: Outbox) -> None:
    """D10: a re-post that stores its parts again (``existing``) leaves a
    part already delivered as it is: its readings stay gone."""
    push(box, "B1", {"ores": 1})
    (part,) = box.claim("ores")
    assert box.acknowledged(part.id, part.lease)
    box.enqueue(batch_id="B1", source="hes-operator", fingerprint="fp-B1", received=9,
                quarantined=0, existing=True,
                parts=[(part.id, "ores", "hes-readings", [{"meter": "M0", "value": 0}])])
    (done,) = box.parts()
    assert done.status == "delivered"
    with pytest.raises(KeyError):
        box.payload_bytes(done)


def test_the_same_batch_again_changes_nothing(box: Outbox) -> None:
    push(box, "B1", {"ores": 2})
    push(box, "B1", {"ores": 2})
    assert [p.id for p in box.parts()] == ["hes-operator/B1/ores"]


def test_a_claim_takes_due_parts_under_a_lease_and_an_ack_drops_the_payload(
        box: Outbox, clock: Clock) -> None:
    push(box, "B1", {"ores": 1})
    (part,) = box.claim("ores")
    assert part.lease is not None and not part.reclaimed
    assert box.claim("ores") == []  # held: not claimed twice
    assert box.acknowledged(part.id, part.lease) is True
    (done,) = box.parts()
    assert done.status == "delivered"
    with pytest.raises(KeyError):
        box.payload_bytes(done)  # D10: the readings are gone, the counts stay
    assert box.acknowledged(part.id, part.lease) is False  # once


def test_a_failure_schedules_a_retry_then_a_dead_letter(box: Outbox, clock: Clock) -> None:
    push(box, "B1", {"ores": 1})
    for attempt in range(1, 4):
        clock.advance(3600)
        (part,) = box.claim("ores")
        assert part.attempts == attempt - 1
        status = box.failed(part, "http-503", RETRY, permanent=False)
        assert status == ("dead" if attempt == 3 else "pending")
    assert box.claim("ores") == [] and box.stats()["ores"] == (0, 0.0, 1)
    (dead,) = box.parts(status="dead")
    assert box.requeue_dead(dead.id) is True
    assert [p.id for p in box.claim("ores")] == [dead.id]


def due(box: Outbox) -> set[str]:
    """The tenants the survey finds with a part due (``Outbox.survey``)."""
    return box.survey()[0]


def test_the_due_tenants_are_those_with_a_part_free_to_claim_now(
        open_box: OpenOutbox, clock: Clock) -> None:
    """The delivery's one survey for all tenants (gateway.push._delivery):
    a part under a live lease, or waiting for its retry, is not due; it is
    once the lease runs out or the retry's time comes; a delivered one never."""
    a, b = open_box("replica-a"), open_box("replica-b")
    assert due(a) == set()
    push(a, "B1", {"ores": 1, "stedin": 1})
    assert due(a) == due(b) == {"ores", "stedin"}
    (held,) = a.claim("ores")
    assert due(b) == {"stedin"}  # a's lease on ores' part is live
    clock.advance(61)
    assert due(b) == {"ores", "stedin"}  # a's lease ran out
    (taken,) = b.claim("ores")
    assert taken.id == held.id and taken.reclaimed
    assert b.failed(taken, "http-503", RETRY, permanent=False) == "pending"
    assert due(b) == {"stedin"}  # waiting for its retry
    clock.advance(3600)
    assert due(b) == {"ores", "stedin"}
    (again,) = b.claim("stedin")
    assert b.acknowledged(again.id, again.lease) is True
    assert due(a) == {"ores"}  # delivered: never due again


def test_a_restarted_replica_takes_back_its_own_leases_at_once(
        open_box: OpenOutbox, clock: Clock) -> None:
    first = open_box("replica-a")
    push(first, "B1", {"ores": 1})
    assert first.claim("ores")  # then killed: the lease would run for a minute
    again = open_box("replica-a")
    assert again.release_mine() == 1
    (part,) = again.claim("ores")
    assert part.id == "hes-operator/B1/ores"


def test_another_replica_takes_over_a_part_when_its_lease_runs_out(
        open_box: OpenOutbox, clock: Clock) -> None:
    a, b = open_box("replica-a"), open_box("replica-b")
    push(a, "B1", {"ores": 1})
    (held,) = a.claim("ores")
    assert b.claim("ores") == []  # a's lease is live
    clock.advance(61)  # a stalled (or died) past its lease
    (taken,) = b.claim("ores")
    assert taken.reclaimed and taken.id == held.id  # the same part, the same key
    assert a.renew(held) is False  # a finds out before delivering
    assert a.acknowledged(held.id, held.lease) is False  # fenced: a's late ack counts not
    assert a.failed(held, "timeout", RETRY, permanent=False) == "lost"
    assert b.acknowledged(taken.id, taken.lease) is True
    assert [p.status for p in a.parts()] == ["delivered"]


def test_a_restart_takes_back_only_its_own_leases(open_box: OpenOutbox, clock: Clock) -> None:
    a, b = open_box("replica-a"), open_box("replica-b")
    push(a, "B1", {"ores": 1})
    (held,) = a.claim("ores")
    assert b.release_mine() == 0  # b restarting lets go of b's leases, not a's
    assert b.claim("ores") == []
    assert a.acknowledged(held.id, held.lease) is True


def test_a_claim_counts_only_for_the_owner_that_made_it(
        open_box: OpenOutbox, clock: Clock) -> None:
    # The fence is owner and token: another replica holding the token (a bug,
    # a mix-up of ids) neither renews nor acknowledges the part.
    a, b = open_box("replica-a"), open_box("replica-b")
    push(a, "B1", {"ores": 1})
    (held,) = a.claim("ores")
    assert b.renew(held) is False
    assert b.acknowledged(held.id, held.lease) is False
    assert b.failed(held, "timeout", RETRY, permanent=False) == "lost"
    assert a.acknowledged(held.id, held.lease) is True


def test_a_renewed_lease_is_not_taken_over(open_box: OpenOutbox, clock: Clock) -> None:
    a, b = open_box("replica-a"), open_box("replica-b")
    push(a, "B1", {"ores": 1})
    (held,) = a.claim("ores")
    clock.advance(50)
    assert a.renew(held) is True
    clock.advance(50)  # 100 s after the claim, 50 after the renewal
    assert b.claim("ores") == []


# -- PostgreSQL: replicas competing ------------------------------------------------
@pytest.fixture()
def pg_url(postgres: Cluster) -> str:
    return postgres.new_database()


def test_replicas_claiming_at_once_never_claim_one_part_twice(pg_url: str) -> None:
    from gateway.push import PostgresOutbox

    seed = PostgresOutbox(pg_url, KEY, owner="seed")
    for b in range(40):
        push(seed, f"B{b}", {"ores": 1})
    boxes = [PostgresOutbox(pg_url, KEY, owner=f"replica-{i}") for i in range(4)]
    claimed: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(len(boxes))

    def work(box: PostgresOutbox) -> None:
        start.wait()
        for _ in range(40):  # bounded
            parts = box.claim("ores", limit=2)
            with lock:
                claimed.update(p.id for p in parts)
            for p in parts:
                assert box.acknowledged(p.id, p.lease)

    threads = [threading.Thread(target=work, args=(b,)) for b in boxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(claimed) == 40 and set(claimed.values()) == {1}  # each part once
    assert {p.status for p in seed.parts()} == {"delivered"}
    for b in [seed, *boxes]:
        b.close()


def test_the_same_batch_pushed_to_two_replicas_at_once_is_stored_once(pg_url: str) -> None:
    from gateway.push import PostgresOutbox

    boxes = [PostgresOutbox(pg_url, KEY, owner=f"replica-{i}") for i in range(2)]
    start = threading.Barrier(2)

    def enqueue(box: PostgresOutbox) -> None:
        start.wait()
        push(box, "B1", {"ores": 3, "fluvius": 1})

    threads = [threading.Thread(target=enqueue, args=(b,)) for b in boxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with psycopg.connect(pg_url) as db:
        batches = db.execute("SELECT count(*) FROM outbox_batches").fetchone()
        parts = db.execute("SELECT count(*) FROM outbox_parts").fetchone()
    assert batches == (1,) and parts == (2,)
    for b in boxes:
        b.close()


def test_replicas_starting_at_once_on_a_new_database_all_open_the_outbox(
        pg_url: str) -> None:
    # CREATE TABLE IF NOT EXISTS is not safe under concurrency in PostgreSQL
    # (the catalog's unique keys): the schema is made under an advisory lock.
    from gateway.push import PostgresOutbox

    n = 8
    start, opened, errors = threading.Barrier(n), list[PostgresOutbox](), list[BaseException]()

    def open_one(i: int) -> None:
        start.wait()
        try:
            opened.append(PostgresOutbox(pg_url, KEY, owner=f"replica-{i}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(opened) == n
    push(opened[0], "B1", {"ores": 1})
    assert [p.id for p in opened[-1].claim("ores")] == ["hes-operator/B1/ores"]
    for b in opened:
        b.close()


def test_payloads_at_rest_are_encrypted_in_postgresql(pg_url: str) -> None:
    from gateway.push import PostgresOutbox

    box = PostgresOutbox(pg_url, KEY, owner="a")
    push(box, "B1", {"ores": 2})
    with psycopg.connect(pg_url) as db:
        (raw,) = db.execute("SELECT payload FROM outbox_parts").fetchone()  # type: ignore[misc]
    assert b"M0" not in bytes(raw) and b"meter" not in bytes(raw)
    box.close()


def as_version_4(db: sqlite3.Connection) -> None:
    """A current outbox file taken back to version 4's layout: each part's
    nonce and payload in its own row, last, and no payloads table."""
    for column in ("nonce", "payload"):
        db.execute(f"ALTER TABLE parts ADD COLUMN {column} BLOB")
        db.execute(f"UPDATE parts SET {column} = (SELECT p.{column} FROM payloads AS p "
                   "WHERE p.id = parts.id)")
    db.execute("DROP TABLE payloads")
    db.execute("PRAGMA user_version = 4")


def test_an_outbox_file_of_version_4_moves_its_payloads_to_their_own_table(
        tmp_path: Path, clock: Clock) -> None:
    """Version 5 keeps a part's payload out of its row: SQLite rewrites a
    whole row on every UPDATE, so each claim and lease of a part rewrote its
    megabyte (bench/README). Every part keeps its state; a payload kept stays
    readable, one gone (delivered, erased) stays gone."""
    from gateway.push import SqliteOutbox
    from gateway.push._outbox_backends import SCHEMA_VERSION

    path = tmp_path / "outbox.db"
    box = SqliteOutbox(path, KEY, owner="replica-a", clock=clock)
    push(box, "B1", {"ores": 2, "fluvius": 1, "sibelga": 1, "resa": 1, "pidpa": 1})
    (leased,) = box.claim("fluvius")
    (done,) = box.claim("sibelga")
    assert box.acknowledged(done.id, done.lease)
    for tenant in ("resa", "pidpa"):  # two dead letters, one of them erased
        (part,) = box.claim(tenant)
        assert box.failed(part, "410 gone", RETRY, permanent=True) == "dead"
    assert box.erase_dead_payloads(["hes-operator/B1/pidpa"], clock()) == 1
    box.close()
    db = sqlite3.connect(path)
    as_version_4(db)
    db.commit()
    assert db.execute("SELECT count(*) FROM parts WHERE payload IS NOT NULL").fetchone() == (3,)
    db.close()
    again = SqliteOutbox(path, KEY, owner="replica-a", clock=clock)
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    names = [r[1] for r in again._db.execute("PRAGMA table_info(parts)")]
    assert "payload" not in names and "nonce" not in names and len(names) == 15
    assert {r[1] for r in again._db.execute("PRAGMA index_list(parts)")} >= {
        "parts_queue", "parts_batch"}
    assert sorted(r[0] for r in again._db.execute("SELECT id FROM payloads")) == [
        "hes-operator/B1/fluvius", "hes-operator/B1/ores", "hes-operator/B1/resa"]
    (part,) = again.claim("ores")
    assert again.payload(part) == [{"meter": "M0", "value": 0}, {"meter": "M1", "value": 1}]
    assert again.claim("fluvius") == []  # still under the lease taken before
    assert again.payload(leased) == [{"meter": "M0", "value": 0}]
    assert again.acknowledged(leased.id, leased.lease)
    with pytest.raises(KeyError):
        again.payload_bytes(done)  # delivered before: gone, and stays gone
    kept = {d.part.id: d.payload_kept for d in again.dead_letters()}
    assert kept == {"hes-operator/B1/resa": True, "hes-operator/B1/pidpa": False}
    assert not again.requeue_dead("hes-operator/B1/pidpa")  # nothing left to send
    assert again.requeue_dead("hes-operator/B1/resa")
    again.close()


def test_an_outbox_file_of_version_1_gains_leases_on_open(tmp_path: Path) -> None:
    import sqlite3

    from gateway.push import SqliteOutbox
    from gateway.push._outbox_backends import SCHEMA_VERSION

    path = tmp_path / "outbox.db"
    box = SqliteOutbox(path, KEY)
    push(box, "B1", {"ores": 1})
    box.close()
    db = sqlite3.connect(path)
    as_version_4(db)
    for column in ("lease_owner", "lease_token", "lease_until"):  # as version 1 had it
        db.execute(f"ALTER TABLE parts DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    again = SqliteOutbox(path, KEY)
    (part,) = again.claim("ores")  # the pending part, now under a lease
    assert part.id == "hes-operator/B1/ores" and again.acknowledged(part.id, part.lease)
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    again.close()


_V3_ORDER = ("id, batch_id, tenant, kind, records, created, status, attempts, "
             "next_attempt_at, last_error, nonce, payload, done_at, source, lease_owner, "
             "lease_token, lease_until")


def test_an_outbox_file_of_version_3_gets_its_payloads_last_on_open(tmp_path: Path) -> None:
    """Version 4 rebuilt the parts table with the payload after every other
    column: SQLite reaches a column after a large blob only through the
    blob's overflow pages, so every lease, status or source read of a part
    walked a megabyte (bench/README, the delivery's profile)."""
    import sqlite3

    from gateway.push import SqliteOutbox

    path = tmp_path / "outbox.db"
    box = SqliteOutbox(path, KEY)
    push(box, "B1", {"ores": 2, "fluvius": 1})
    (leased,) = box.claim("fluvius")  # a lease survives the rebuild
    box.close()
    db = sqlite3.connect(path)  # the table as version 3 had it: payload in the middle
    as_version_4(db)
    columns = _V3_ORDER.replace("nonce, payload", "nonce BLOB, payload BLOB")
    db.execute(f"CREATE TABLE parts_v3 ({columns.replace('id,', 'id TEXT PRIMARY KEY,', 1)})")
    db.execute(f"INSERT INTO parts_v3 ({_V3_ORDER}) SELECT {_V3_ORDER} FROM parts")
    db.execute("DROP TABLE parts")
    db.execute("ALTER TABLE parts_v3 RENAME TO parts")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    again = SqliteOutbox(path, KEY, owner=box.owner)
    names = [r[1] for r in again._db.execute("PRAGMA table_info(parts)")]
    assert "payload" not in names and len(names) == 15  # version 5: in a table of their own
    assert {r[1] for r in again._db.execute("PRAGMA index_list(parts)")} >= {
        "parts_queue", "parts_batch"}
    (part,) = again.claim("ores")
    assert again.payload(part) == [{"meter": "M0", "value": 0}, {"meter": "M1", "value": 1}]
    assert again.claim("fluvius") == []  # still under the lease taken before
    assert again.acknowledged(leased.id, leased.lease)
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == 5
    again.close()


def test_an_outbox_file_of_version_2_gains_the_notifications_register_on_open(
        tmp_path: Path) -> None:
    import sqlite3

    from gateway.push import SqliteOutbox
    from gateway.push._outbox_backends import SCHEMA_VERSION

    path = tmp_path / "outbox.db"
    box = SqliteOutbox(path, KEY)
    push(box, "B1", {"ores": 1})
    box.close()
    db = sqlite3.connect(path)
    as_version_4(db)
    db.execute("DROP TABLE notifications")  # as version 2 had it
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    again = SqliteOutbox(path, KEY)
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    assert again.enqueue_notifications(incident="inc-1", source="gateway:breach",
                                       notices=[("ores", '{"incident": "inc-1"}', None)])
    assert again.notifications("ores", 5) == ['{"incident": "inc-1"}']
    assert [p.id for p in again.parts()] == ["hes-operator/B1/ores"]  # kept
    again.close()


def test_a_new_outbox_file_has_64_kib_pages_and_an_old_one_keeps_its_own(
        tmp_path: Path, clock: Clock) -> None:
    """A part's payload is a chain of overflow pages, and SQLite's work is
    mostly per page: a new file is made of 64 KiB pages, its WAL checkpointed
    at 16 MiB. A file made before with 4 KiB pages opens, works and keeps
    them (only a VACUUM outside WAL mode could change them)."""
    from gateway.push import SqliteOutbox
    from gateway.push._outbox_backends import PAGE_SIZE, WAL_AUTOCHECKPOINT_PAGES

    new = SqliteOutbox(tmp_path / "new.db", KEY, clock=clock)
    push(new, "B1", {"ores": 3})
    assert new._db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 65536
    assert new._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == \
        WAL_AUTOCHECKPOINT_PAGES == 256
    new.close()
    assert (tmp_path / "new.db").stat().st_size % PAGE_SIZE == 0
    old_path = tmp_path / "old.db"
    db = sqlite3.connect(old_path)
    db.execute("PRAGMA page_size = 4096")
    db.execute("CREATE TABLE made_before (x)")  # the page size is fixed from here
    db.commit()
    db.close()
    old = SqliteOutbox(old_path, KEY, clock=clock)
    assert old._db.execute("PRAGMA page_size").fetchone()[0] == 4096
    push(old, "B1", {"ores": 2})
    (part,) = old.claim("ores")
    assert old.payload(part) == [{"meter": "M0", "value": 0}, {"meter": "M1", "value": 1}]
    old.close()
