"""Delivery by competing replicas (D5), through PushService on PostgreSQL
with a receiver on loopback: a replica that stalls mid delivery past its
lease loses the part to another replica, which delivers it again under the
same Idempotency-Key; the stalled replica's late acknowledgement is refused
(fencing) and counted, ``gateway_outbox_claims_total{result="lost"}``.
And the one survey of the outbox for all tenants: an idle tenant's loop
claims nothing until a part of its own is due; a part stored while a claim
runs is claimed in the next round, not at the next survey."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.audit import ChainedAuditLog
from gateway.audit._format import load_or_create_audit_key
from gateway.core.relations.index import RelationIndex
from gateway.metrics import GatewayMetrics
from gateway.push import Outbox, PostgresOutbox, PushService
from tests.postgres import Cluster
from tests.push.conftest import KEY, Clock

PART = "hes-operator/B1/ores"


class Receiver:
    """Each replica posts to its own path; every request waits for its release."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, bytes]] = []  # (path, Idempotency-Key, body)
        self.arrived = {p: asyncio.Event() for p in ("/a", "/b")}
        self.release = {p: asyncio.Event() for p in ("/a", "/b")}

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((request.path, request.headers["Idempotency-Key"],
                         await request.read()))
        self.arrived[request.path].set()
        await self.release[request.path].wait()
        return web.Response(status=200)


@pytest.fixture()
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/{replica}", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield rx, f"http://127.0.0.1:{port}"
    for event in rx.release.values():
        event.set()
    await runner.cleanup()


def replica(outbox: Outbox, endpoint: str, tmp: Path, clock: Clock,
            tenants: tuple[str, ...] = ("ores",)) -> PushService:
    tmp.mkdir()
    key, kid = load_or_create_audit_key(tmp)
    return PushService(outbox=outbox, relations=lambda: RelationIndex([]),
                       endpoints=dict.fromkeys(tenants, endpoint),
                       client_tls=ssl.create_default_context(),
                       metrics=GatewayMetrics(), audit=ChainedAuditLog(tmp / "audit.log", key, kid),
                       lease_s=60, clock=clock)


def claims(svc: PushService, result: str) -> float:
    value = svc.metrics.registry.get_sample_value("gateway_outbox_claims_total",
                                                  {"result": result})
    return value or 0.0


def two_replicas(postgres: Cluster, url: str, tmp_path: Path
                 ) -> tuple[Clock, tuple[PostgresOutbox, PushService],
                            tuple[PostgresOutbox, PushService]]:
    """Replicas a and b on one database, posting to the receiver's /a and /b."""
    dsn, clock = postgres.new_database(), Clock()
    boxes = [PostgresOutbox(dsn, KEY, owner=f"replica-{n}", clock=clock) for n in "ab"]
    a, b = (replica(box, f"{url}/{n}", tmp_path / n, clock)
            for box, n in zip(boxes, "ab", strict=True))
    return clock, (boxes[0], a), (boxes[1], b)


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (the database, the metrics) for up to 10 s."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


async def test_a_stalled_replica_loses_its_part_and_the_other_delivers_it_under_the_same_key(
        postgres: Cluster, receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    rx, url = receiver
    clock, (box_a, a), (box_b, b) = two_replicas(postgres, url, tmp_path)
    box_a.enqueue(batch_id="B1", source="hes-operator", fingerprint="f", received=2,
                  quarantined=0, parts=[(PART, "ores", "hes-readings",
                                         [{"meter": "M1", "value": 1.5}])])
    try:
        await a.start()
        await asyncio.wait_for(rx.arrived["/a"].wait(), 10)  # a delivers, and stalls
        await b.start()
        # b's first round found nothing free, and its surveys do not wake it
        # for a part under a's live lease.
        await until(lambda: b.delivery.surveys >= 2)
        assert claims(b, "empty") == 1 and not rx.arrived["/b"].is_set()
        clock.advance(61)  # a's lease ran out: b takes the part over
        await asyncio.wait_for(rx.arrived["/b"].wait(), 10)
        assert claims(b, "reclaimed") == 1
        rx.release["/a"].set()  # a's answer comes late: its acknowledgement is fenced
        await until(lambda: claims(a, "lost") == 1)
        assert [p.status for p in box_a.parts()] == ["pending"]  # a's ack changed nothing
        rx.release["/b"].set()
        await until(lambda: [p.status for p in box_a.parts()] == ["delivered"])
    finally:
        await a.stop()
        await b.stop()
        box_a.close()
        box_b.close()
    # At least once, and never a second key for one part.
    assert [(path, key) for path, key, _ in rx.got] == [("/a", PART), ("/b", PART)]
    assert rx.got[0][2] == rx.got[1][2]
    assert claims(a, "claimed") == 1 and claims(b, "claimed") == 0
    ok = {"tenant": "ores", "result": "ok"}
    assert a.metrics.registry.get_sample_value("gateway_delivery_attempts_total", ok) is None
    assert b.metrics.registry.get_sample_value("gateway_delivery_attempts_total", ok) == 1


def enqueue(box: Outbox, *batches: str) -> None:
    for batch in batches:
        box.enqueue(batch_id=batch, source="hes-operator", fingerprint=f"f-{batch}", received=1,
                    quarantined=0, parts=[(f"hes-operator/{batch}/ores", "ores", "hes-readings",
                                           [{"meter": "M1", "value": 1.5}])])


async def test_a_fresh_claim_is_delivered_without_renewing_its_leases(
        receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    """Within the first quarter of the lease the claim's own lease stands: no
    renewal (in SQLite a renewal rewrites the row, payload and all)."""
    from gateway.push import SqliteOutbox

    rx, url = receiver
    clock = Clock()
    box = SqliteOutbox(tmp_path / "outbox.db", KEY, owner="replica-a", clock=clock)
    renewed: list[str] = []
    renew = box.renew

    def counting(part: Any, lease: Any = None) -> bool:
        renewed.append(part.id)
        return renew(part, lease) if lease is not None else renew(part)

    box.renew = counting  # type: ignore[method-assign]
    a = replica(box, f"{url}/a", tmp_path / "a", clock)
    enqueue(box, "B1", "B2")
    rx.release["/a"].set()
    try:
        await a.start()
        await until(lambda: [p.status for p in box.parts()] == ["delivered", "delivered"])
    finally:
        await a.stop()
        box.close()
    assert renewed == [] and claims(a, "claimed") == 2
    assert [key for _, key, _ in rx.got] == ["hes-operator/B1/ores", "hes-operator/B2/ores"]


async def test_a_part_waiting_past_a_quarter_of_its_lease_is_renewed_or_given_up(
        postgres: Cluster, receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    """Claimed together, delivered one after the other: the second part is
    renewed before it goes once the claim is older than a quarter of the
    lease, and a part another replica took over meanwhile is not sent again
    by the first (counted ``lost``)."""
    rx, url = receiver
    clock, (box_a, a), (box_b, b) = two_replicas(postgres, url, tmp_path)
    enqueue(box_a, "B1", "B2")
    try:
        await a.start()
        await asyncio.wait_for(rx.arrived["/a"].wait(), 10)  # a claimed both; B1 stalls
        clock.advance(61)  # a's leases ran out: b takes both over
        await b.start()
        await asyncio.wait_for(rx.arrived["/b"].wait(), 10)
        assert claims(b, "reclaimed") == 2
        rx.release["/a"].set()  # a's late answer is fenced; B2 is b's now: a gives it up
        await until(lambda: claims(a, "lost") == 2)
        rx.release["/b"].set()
        await until(lambda: [p.status for p in box_a.parts()] == ["delivered", "delivered"])
    finally:
        await a.stop()
        await b.stop()
        box_a.close()
        box_b.close()
    assert [key for path, key, _ in rx.got if path == "/a"] == ["hes-operator/B1/ores"]
    assert sorted(key for path, key, _ in rx.got if path == "/b") == [
        "hes-operator/B1/ores", "hes-operator/B2/ores"]


async def test_idle_tenants_claim_nothing_until_the_survey_finds_a_part_due(
        receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    """Six tenants, nothing to deliver: each loop claims once at start, then
    sleeps (one survey a second for all of them, not a claim a second each).
    A part stored without the intake's wake-up (another replica's, a retry
    fallen due) is found by the survey and delivered."""
    from gateway.push import SqliteOutbox

    rx, url = receiver
    clock = Clock()
    box = SqliteOutbox(tmp_path / "outbox.db", KEY, owner="replica-a", clock=clock)
    tenants = ("ores", "enexis-water", "stedin", "liander", "westland", "coteq")
    svc = replica(box, f"{url}/a", tmp_path / "a", clock, tenants)
    rx.release["/a"].set()
    try:
        await svc.start()
        await until(lambda: svc.delivery.surveys >= 3)
        assert claims(svc, "empty") == len(tenants)  # one round each, at start
        enqueue(box, "B1")  # straight into the outbox: nobody calls wake_up
        await until(lambda: [p.status for p in box.parts()] == ["delivered"])
    finally:
        await svc.stop()
        box.close()
    assert [key for _, key, _ in rx.got] == ["hes-operator/B1/ores"]
    assert claims(svc, "claimed") == 1
    assert claims(svc, "empty") <= len(tenants) + 2  # ores' rounds after its delivery


async def test_a_part_stored_while_the_claim_runs_is_claimed_next_without_a_survey(
        receiver: tuple[Receiver, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's wake-up is cleared before its claim, not after: an intake
    that stores a part and wakes the loop while the claim's query runs (too
    late for that query) gets it claimed in the next round at once, not at
    the next survey (here: never, the survey sleeping for an hour)."""
    from gateway.push import SqliteOutbox, _delivery

    monkeypatch.setattr(_delivery, "SURVEY_S", 3600.0)
    rx, url = receiver
    clock = Clock()
    box = SqliteOutbox(tmp_path / "outbox.db", KEY, owner="replica-a", clock=clock)
    svc = replica(box, f"{url}/a", tmp_path / "a", clock)
    loop = asyncio.get_running_loop()
    claim, calls = box.claim, []

    def claim_then_store(*args: Any) -> Any:
        found = claim(*args)  # the query has run: what is stored now, it missed
        calls.append(len(found))
        if len(calls) == 2:  # the round after the nudge below: an intake's store
            enqueue(box, "B1")
            loop.call_soon_threadsafe(svc.delivery.wake_up, "ores")
        return found

    box.claim = claim_then_store  # type: ignore[method-assign]
    rx.release["/a"].set()
    try:
        await svc.start()
        await until(lambda: svc.delivery.surveys == 1 and calls == [0])  # both asleep
        svc.delivery.wake_up("ores")  # news with nothing in it: round two claims nothing
        await until(lambda: [p.status for p in box.parts()] == ["delivered"])
    finally:
        await svc.stop()
        box.close()
    assert calls[:3] == [0, 0, 1] and svc.delivery.surveys == 1
    assert [key for _, key, _ in rx.got] == ["hes-operator/B1/ores"]
