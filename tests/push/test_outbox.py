"""The push outbox (D5, D10) on both backends, and the competition of a
fleet's replicas for its parts on PostgreSQL: claims under leases, fencing,
at-least-once delivery under one Idempotency-Key per part."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def as_version_5(db: sqlite3.Connection) -> None:
    """A current outbox file taken back to version 5's layout: each payload
    a blob in the payloads table under the outbox data key, none in a file."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from gateway.push import SqliteOutbox

    (path,) = (Path(r[2]) for r in db.execute("PRAGMA database_list") if r[1] == "main")
    files = path.with_name(path.name + ".payloads")
    db.execute("CREATE TABLE payloads_v5 (id TEXT PRIMARY KEY, nonce BLOB NOT NULL, "
               "payload BLOB NOT NULL)")
    for part_id, nonce, payload, name in db.execute(
            "SELECT id, nonce, payload, file FROM payloads").fetchall():
        if name is not None:
            payload = (files / name).read_bytes()
            (files / name).unlink()
        # Sealed under the outbox data key itself, a 12-byte nonce, as version 5 did.
        aad = part_id.encode()
        key = AESGCM(KEY).decrypt(nonce[12:24], nonce[24:], aad + SqliteOutbox._KEY_AAD)
        body = AESGCM(key).decrypt(nonce[:12], payload, aad)
        nonce = os.urandom(12)
        payload = AESGCM(KEY).encrypt(nonce, body, aad)
        db.execute("INSERT INTO payloads_v5 VALUES (?, ?, ?)", (part_id, nonce, payload))
    db.execute("DROP TABLE payloads")
    db.execute("ALTER TABLE payloads_v5 RENAME TO payloads")
    db.execute("PRAGMA user_version = 5")


def as_version_4(db: sqlite3.Connection) -> None:
    """A current outbox file taken back to version 4's layout: each part's
    nonce and payload in its own row, last, and no payloads table."""
    as_version_5(db)
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
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
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
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == 6
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
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
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


# -- the SQLite outbox's payload files (D5, D10) ------------------------------------


def files_of(box: Outbox) -> list[str]:
    from gateway.push import SqliteOutbox

    assert isinstance(box, SqliteOutbox)
    return sorted(p.name for p in box.files.dir.iterdir())


def test_a_payload_is_a_file_of_its_own_encrypted_and_owner_only(
        tmp_path: Path, clock: Clock) -> None:
    """Version 6: a stored part's payload is written once, to a file the
    part's row names (SQLite wrote it into its WAL and again at the
    checkpoint). The file holds the ciphertext, readable by the owner alone."""
    from gateway.push import SqliteOutbox

    (tmp_path / "outbox.db.payloads").mkdir(mode=0o755)  # made wider before: tightened
    box = SqliteOutbox(tmp_path / "outbox.db", KEY, clock=clock)
    push(box, "B1", {"ores": 2, "fluvius": 1})
    (name_ores,), (name_fluvius,) = (
        box._db.execute("SELECT file FROM payloads WHERE id = ? AND payload IS NULL",
                        (f"hes-operator/B1/{t}",)).fetchone() for t in ("ores", "fluvius"))
    assert files_of(box) == sorted([name_ores, name_fluvius])
    assert box.files.dir == tmp_path / "outbox.db.payloads"
    assert box.files.dir.stat().st_mode & 0o777 == 0o700
    sealed = (box.files.dir / name_ores).read_bytes()
    assert (box.files.dir / name_ores).stat().st_mode & 0o777 == 0o600
    assert b"meter" not in sealed and b"M0" not in sealed  # ciphertext only
    (part,) = box.claim("ores")
    assert box.payload(part) == [{"meter": "M0", "value": 0}, {"meter": "M1", "value": 1}]
    box.close()


def wrapped_key(box: Outbox, part_id: str) -> bytes:
    """The part's own data key as its row holds it (wrapped), after the nonce."""
    from gateway.push import SqliteOutbox

    assert isinstance(box, SqliteOutbox)
    (nonce,) = box._db.execute("SELECT nonce FROM payloads WHERE id = ?", (part_id,)).fetchone()
    assert len(nonce) == 72
    return bytes(nonce[12:])


def stored_bytes(path: Path) -> bytes:
    """The outbox file and its WAL, as on disk."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*"))
                    if p.is_file())


def test_a_delivered_payload_is_crypto_shredded(tmp_path: Path, clock: Clock) -> None:
    """D10: once delivered, the payload goes. Its file is encrypted under a
    key of its own that only its row holds; the row is deleted (its page
    zeroed) and the file unlinked, so even a second name of the file (a
    backup's hard link, the disk's freed blocks) holds ciphertext whose key
    exists nowhere, not under the outbox data key either."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from gateway.push import SqliteOutbox

    path = tmp_path / "outbox.db"
    box = SqliteOutbox(path, KEY, clock=clock)
    push(box, "B1", {"ores": 2, "fluvius": 1})
    (part,) = box.claim("ores")
    (name,) = box._db.execute("SELECT file FROM payloads WHERE id = ?", (part.id,)).fetchone()
    wrapped = wrapped_key(box, part.id)
    os.link(box.files.dir / name, tmp_path / "second-name")
    assert box.acknowledged(part.id, part.lease)
    assert name not in files_of(box) and len(files_of(box)) == 1  # fluvius's stays
    with pytest.raises(KeyError):
        box.payload_bytes(part)
    box.close()  # the WAL checkpointed and truncated
    assert wrapped not in stored_bytes(path)  # the key is gone from the disk
    kept = (tmp_path / "second-name").read_bytes()
    with pytest.raises(InvalidTag):  # and the outbox key alone opens nothing
        AESGCM(KEY).decrypt(kept[:12], kept[12:], part.id.encode())
    again = SqliteOutbox(path, KEY, clock=clock)
    (other,) = again.claim("fluvius")
    assert again.payload(other) == [{"meter": "M0", "value": 0}]  # the other part is intact
    again.close()


def test_an_erased_dead_letter_payload_is_crypto_shredded(tmp_path: Path, clock: Clock) -> None:
    from gateway.push import SqliteOutbox

    path = tmp_path / "outbox.db"
    box = SqliteOutbox(path, KEY, clock=clock)
    push(box, "B1", {"ores": 2})
    (part,) = box.claim("ores")
    assert box.failed(part, "410 gone", RETRY, permanent=True) == "dead"
    wrapped = wrapped_key(box, part.id)
    assert box.erase_dead_payloads([part.id], clock()) == 1
    assert files_of(box) == []
    assert [d.payload_kept for d in box.dead_letters()] == [False]
    assert box.erase_dead_payloads([part.id], clock()) == 0  # again: nothing
    box.close()
    assert wrapped not in stored_bytes(path)


def test_a_transaction_that_fails_leaves_no_payload_file(tmp_path: Path, clock: Clock) -> None:
    """Files are written before the commit that names them: when the
    transaction fails after a file is written, the file goes with it."""
    from gateway.push import SqliteOutbox

    class Failing(SqliteOutbox):
        def _exec(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
            if sql.startswith("INSERT INTO payloads") and args[0].endswith("/resa"):
                raise sqlite3.OperationalError("disk I/O error")
            return super()._exec(sql, args)

    box = Failing(tmp_path / "outbox.db", KEY, clock=clock)
    with pytest.raises(sqlite3.OperationalError):
        push(box, "B1", {"ores": 2, "fluvius": 1, "resa": 1})
    assert files_of(box) == [] and box.parts() == [] and box.batch("B1") is None
    push(box, "B2", {"ores": 1})  # the handle goes on
    assert len(files_of(box)) == 1 and len(box.parts()) == 1
    box.close()


def test_a_failed_acknowledgement_removes_nothing(tmp_path: Path, clock: Clock) -> None:
    """A payload row whose deletion rolled back keeps its file, also after
    a later acknowledgement of another part commits."""
    from gateway.push import SqliteOutbox

    class Failing(SqliteOutbox):
        fail = True

        def _drop_payloads(self, where: str, args: Sequence[Any]) -> int:
            dropped = super()._drop_payloads(where, args)
            if self.fail:  # after the DELETE, before the commit
                raise sqlite3.OperationalError("disk I/O error")
            return dropped

    box = Failing(tmp_path / "outbox.db", KEY, clock=clock)
    push(box, "B1", {"ores": 1, "fluvius": 1})
    (ores,), (fluvius,) = box.claim("ores"), box.claim("fluvius")
    with pytest.raises(sqlite3.OperationalError):
        box.acknowledged(ores.id, ores.lease)
    box.fail = False
    assert box.acknowledged(fluvius.id, fluvius.lease)
    assert len(files_of(box)) == 1
    assert box.payload(ores) == [{"meter": "M0", "value": 0}]
    box.close()


def test_orphan_payload_files_are_removed_when_the_outbox_opens(
        tmp_path: Path, clock: Clock) -> None:
    """A file no row names (the process stopped between writing it and the
    commit) is removed when the outbox is opened again, once older than a
    write in progress could be; a file a row names, and any file not made
    by the outbox, are left alone; a handle without the data key (the
    retention report) removes nothing."""
    from gateway.push import SqliteOutbox
    from gateway.push._payload_files import ORPHAN_AGE_S

    path = tmp_path / "outbox.db"
    box = SqliteOutbox(path, KEY, clock=clock)
    push(box, "B1", {"ores": 1})
    (kept,) = files_of(box)
    box.close()
    old = time.time() - ORPHAN_AGE_S - 5
    files = tmp_path / "outbox.db.payloads"
    for name in ("0" * 32 + ".part", "1" * 32 + ".part", "notes.txt"):
        (files / name).write_bytes(b"x" * 10)
    for name in (kept, "0" * 32 + ".part", "notes.txt"):
        os.utime(files / name, (old, old))
    SqliteOutbox(path, None).close()
    assert len(files_of(box)) == 4
    again = SqliteOutbox(path, KEY, clock=clock)
    assert files_of(again) == sorted([kept, "1" * 32 + ".part", "notes.txt"])
    (part,) = again.claim("ores")
    assert again.payload(part) == [{"meter": "M0", "value": 0}]
    again.close()


def test_a_payload_file_is_bound_to_its_part(tmp_path: Path, clock: Clock) -> None:
    """The part id is the associated data of its payload's encryption: a
    file put in another part's place does not decrypt, and a row's file
    name is never read as a path."""
    from cryptography.exceptions import InvalidTag

    from gateway.push import SqliteOutbox

    box = SqliteOutbox(tmp_path / "outbox.db", KEY, clock=clock)
    push(box, "B1", {"ores": 1, "fluvius": 1})
    (ores,), (fluvius,) = box.claim("ores"), box.claim("fluvius")
    name_of = dict(box._db.execute("SELECT id, file FROM payloads").fetchall())
    (box.files.dir / name_of[ores.id]).write_bytes(
        (box.files.dir / name_of[fluvius.id]).read_bytes())
    box._db.execute("UPDATE payloads SET nonce = (SELECT nonce FROM payloads WHERE id = ?) "
                    "WHERE id = ?", (fluvius.id, ores.id))
    with pytest.raises(InvalidTag):
        box.payload_bytes(ores)
    box._db.execute("UPDATE payloads SET file = '../outbox.db' WHERE id = ?", (fluvius.id,))
    with pytest.raises(ValueError, match="not a payload file name"):
        box.payload_bytes(fluvius)
    box.close()


def test_an_outbox_file_of_version_5_keeps_its_blobs_and_stores_new_payloads_in_files(
        tmp_path: Path, clock: Clock) -> None:
    from gateway.push import SqliteOutbox

    path = tmp_path / "outbox.db"
    box = SqliteOutbox(path, KEY, clock=clock)
    push(box, "B1", {"ores": 2, "fluvius": 1})
    box.close()
    db = sqlite3.connect(path)
    as_version_5(db)
    db.commit()
    db.close()
    again = SqliteOutbox(path, KEY, clock=clock)
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == 6
    assert files_of(again) == []  # the blobs stay where they are
    push(again, "B2", {"ores": 1})
    assert len(files_of(again)) == 1
    first, second = again.claim("ores")
    assert again.payload(first) == [{"meter": "M0", "value": 0}, {"meter": "M1", "value": 1}]
    assert again.payload(second) == [{"meter": "M0", "value": 0}]
    assert again.acknowledged(first.id, first.lease) and again.acknowledged(second.id,
                                                                            second.lease)
    assert files_of(again) == []
    assert tuple(again._db.execute("SELECT count(*) FROM payloads").fetchone()) == (1,)
    again.close()
