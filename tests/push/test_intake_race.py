"""The same batch id pushed to two replicas at once (D1, D5): the unique key
``(source, batch_id)`` stores one of them, and the other replica answers as
for a re-post of the stored one: ``already-queued`` for the same content,
409 for other content, never a ``queued`` for content that was not stored.

The race is made certain, not hoped for: the test holds a lock on the
batches table that lets both replicas read (neither finds the batch) but
holds their inserts until both wait; then it lets go."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.audit import ChainedAuditLog
from gateway.audit._format import load_or_create_audit_key
from gateway.core.model import Caller, Principal, Relation, Tenant
from gateway.core.push.fanout import CMH_REQUEST, CMH_REQUEST_CONNECTION, request_connection_id
from gateway.core.relations.index import RelationIndex
from gateway.errors import RequestRefused
from gateway.metrics import GatewayMetrics
from gateway.push import Outbox, PostgresOutbox, PushService
from tests.postgres import Cluster
from tests.push.conftest import KEY

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
METER = "1SAG1100042062"
HES = Caller(Tenant("hes-operator", "HES", "shared-system", push_intake="hes"),
             Principal("hes-operator", "service", "pusher", frozenset({"pusher"})))
PORTAL = Caller(Tenant("cmh-portal", "Connect My Home", "shared-system", push_intake="cmh"),
                Principal("cmh-portal", "service", "pusher", frozenset({"pusher"})))
RELATIONS = RelationIndex([
    Relation("meter", METER, "ores", "owner"),
    Relation(CMH_REQUEST, "R1", "ores", "coordinator"),
    Relation(CMH_REQUEST_CONNECTION, request_connection_id("R1", "c1"), "swde", "operator"),
])
KINDS = {"ores": "dso", "swde": "water"}


@pytest.fixture()
def pg_url(postgres: Cluster) -> str:
    return postgres.new_database()


@contextmanager
def inserts_held(pg_url: str) -> Iterator[Callable[[int], None]]:
    """Reads of the batches table go on, inserts into it wait until the block
    ends; the function given waits until ``n`` sessions wait so."""
    with psycopg.connect(pg_url) as db:
        db.execute("LOCK TABLE outbox_batches IN SHARE ROW EXCLUSIVE MODE")
        me = db.info.backend_pid

        def waiting(n: int) -> None:
            deadline = time.monotonic() + 20
            with psycopg.connect(pg_url, autocommit=True) as probe:
                while time.monotonic() < deadline:
                    row = probe.execute(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND "
                        "relation = 'outbox_batches'::regclass AND pid <> %s", (me,)).fetchone()
                    if row is not None and row[0] >= n:
                        return
                    time.sleep(0.01)
            raise AssertionError(f"{n} inserts never came to wait")

        yield waiting
        db.commit()  # the lock goes: both inserts run, the unique key decides


class AtOnce:
    """``calls`` run in threads until each waits on the held inserts; after the
    block, :meth:`results` joins them (an exception is a result too)."""

    def __init__(self, calls: list[Callable[[], Any]], waiting: Callable[[int], None]) -> None:
        self._results: list[Any] = [None] * len(calls)
        self._threads = [threading.Thread(target=self._run, args=(i, call))
                         for i, call in enumerate(calls)]
        for t in self._threads:
            t.start()
        waiting(len(calls))

    def _run(self, i: int, call: Callable[[], Any]) -> None:
        try:
            self._results[i] = call()
        except BaseException as exc:  # the test looks at it
            self._results[i] = exc

    def results(self) -> list[Any]:
        for t in self._threads:
            t.join(20)
        assert not any(t.is_alive() for t in self._threads)
        return self._results


def service(outbox: Outbox, tmp: Path, metrics: GatewayMetrics) -> PushService:
    key, kid = load_or_create_audit_key(tmp)
    return PushService(outbox=outbox, relations=lambda: RELATIONS,
                       endpoints={"ores": "https://127.0.0.1:9/", "swde": "https://127.0.0.1:9/"},
                       client_tls=ssl.create_default_context(), metrics=metrics,
                       audit=ChainedAuditLog(tmp / "audit.log", key, kid), clock=lambda: NOW)


@pytest.fixture()
def replicas(pg_url: str, tmp_path: Path) -> Iterator[list[tuple[PushService, GatewayMetrics]]]:
    made = []
    for name in ("replica-a", "replica-b"):
        (tmp_path / name).mkdir()
        metrics = GatewayMetrics()
        made.append((service(PostgresOutbox(pg_url, KEY, owner=name), tmp_path / name,
                             metrics), metrics))
    yield made
    for svc, _ in made:
        svc.outbox.close()


def batch(value: float) -> bytes:
    return json.dumps({"batch_id": "B1", "records": [
        {"meter": METER, "timestamp": (NOW - timedelta(days=1)).isoformat(),
         "obis": "1-0:1.8.1", "value": value, "unit": "kWh", "quality": "01"}]}).encode()


def queued(metrics: GatewayMetrics) -> float:
    value = metrics.registry.get_sample_value(
        "gateway_push_records_total",
        {"source": "hes-operator", "tenant": "ores", "outcome": "queued"})
    return value or 0.0


def test_the_outbox_stores_one_of_two_pushes_of_a_batch_id_at_once(pg_url: str) -> None:
    a, b = (PostgresOutbox(pg_url, KEY, owner=o) for o in ("replica-a", "replica-b"))

    def push(box: Outbox, tenant: str) -> Callable[[], bool]:
        return lambda: box.enqueue(
            batch_id="B1", source="hes-operator", fingerprint=f"fp-{tenant}", received=1,
            quarantined=0, parts=[(f"hes-operator/B1/{tenant}", tenant, "hes-readings",
                                   [{"meter": "M1"}])])

    with inserts_held(pg_url) as waiting:
        run = AtOnce([push(a, "ores"), push(b, "fluvius")], waiting)
    stored = run.results()
    assert sorted(stored) == [False, True]  # one stored it; the other stored nothing
    winner = "ores" if stored[0] else "fluvius"
    assert a.batch("B1", "hes-operator")["fingerprint"] == f"fp-{winner}"  # type: ignore[index]
    # No mix: only the parts of the batch whose fingerprint is kept.
    assert [p.tenant for p in a.parts()] == [winner]
    a.close()
    b.close()


def test_the_same_batch_at_two_replicas_at_once_is_queued_once_and_answered_as_a_repost(
        pg_url: str, replicas: list[tuple[PushService, GatewayMetrics]]) -> None:
    (a, ma), (b, mb) = replicas
    with inserts_held(pg_url) as waiting:
        run = AtOnce([lambda: a.intake(HES, batch(1.0)), lambda: b.intake(HES, batch(1.0))],
                          waiting)
    answers = run.results()
    assert [status for status, _, _ in answers] == [202, 202]
    statuses = sorted(doc["parts"][0]["status"] for _, doc, _ in answers)
    assert statuses == ["already-queued", "queued"]  # as a re-post is answered
    assert {doc["parts"][0]["idempotency_key"] for _, doc, _ in answers} == {
        "hes-operator/B1/ores"}
    assert [p.id for p in a.outbox.parts()] == ["hes-operator/B1/ores"]
    assert queued(ma) + queued(mb) == 1  # counted once, by the replica that stored it


def test_other_content_under_the_same_batch_id_at_once_is_refused_not_lost(
        pg_url: str, replicas: list[tuple[PushService, GatewayMetrics]]) -> None:
    (a, _), (b, _) = replicas
    with inserts_held(pg_url) as waiting:
        run = AtOnce([lambda: a.intake(HES, batch(1.0)), lambda: b.intake(HES, batch(2.0))],
                          waiting)
    answers = run.results()
    refused = [r for r in answers if isinstance(r, RequestRefused)]
    stored = [r for r in answers if not isinstance(r, BaseException)]
    assert len(refused) == 1 and len(stored) == 1, answers
    assert (refused[0].status, refused[0].reason) == (409, "batch-id-reused-with-other-content")
    (part,) = a.outbox.parts()
    value = 1.0 if answers[0] is stored[0] else 2.0
    assert a.outbox.payload(part)[0]["value"] == value  # what was answered 202 is stored


def booking(street: str) -> bytes:
    return json.dumps({"id": "R1", "coordinator": "ores",
                       "site": {"street": street, "postal_code": "7000", "city": "Mons"},
                       "connections": [{"id": "c1", "operator": "swde",
                                        "kind": "water"}]}).encode()


def test_a_booking_posted_to_two_replicas_at_once_is_stored_once(
        pg_url: str, replicas: list[tuple[PushService, GatewayMetrics]]) -> None:
    (a, _), (b, _) = replicas
    coordinators = frozenset({"ores"})
    with inserts_held(pg_url) as waiting:
        run = AtOnce(
            [lambda: a.intake_cmh(PORTAL, booking("Rue 1"), KINDS, coordinators),
             lambda: b.intake_cmh(PORTAL, booking("Rue 2"), KINDS, coordinators)], waiting)
    answers = run.results()
    refused = [r for r in answers if isinstance(r, RequestRefused)]
    assert len(refused) == 1, answers
    assert (refused[0].status, refused[0].reason) == (409, "request-id-reused-with-other-content")
    parts = {p.tenant: p for p in a.outbox.parts()}
    assert sorted(parts) == ["ores", "swde"]  # the coordinator's whole request, swde's part
    street = "Rue 1" if answers[1] is refused[0] else "Rue 2"
    assert a.outbox.payload(parts["swde"])[0]["site"]["street"] == street


def test_a_repost_storing_parts_refused_before_adds_them(tmp_path: Path) -> None:
    from gateway.push import SqliteOutbox

    box = SqliteOutbox(tmp_path / "outbox.db", KEY)
    assert box.enqueue(batch_id="B1", source="s", fingerprint="f", received=2, quarantined=0,
                       parts=[("s/B1/ores", "ores", "hes-readings", [{"m": 1}])])
    assert box.enqueue(batch_id="B1", source="s", fingerprint="f", received=2, quarantined=0,
                       parts=[("s/B1/pidpa", "pidpa", "hes-readings", [{"m": 2}])],
                       existing=True)
    assert not box.enqueue(batch_id="B1", source="s", fingerprint="f", received=2,
                           quarantined=0, parts=[("s/B1/swde", "swde", "hes-readings", [])])
    assert sorted(p.tenant for p in box.parts()) == ["ores", "pidpa"]
    box.close()
