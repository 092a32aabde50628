"""Delivery of the outbox's parts to the tenants' receivers over mTLS: one
loop per tenant, so a receiver that is down or slow holds up only its own
queue. A part is claimed under a lease (a fleet's replicas share the
outbox), posted under its ``Idempotency-Key``, acknowledged fenced by that
lease, retried with back-off, and a dead letter when the receiver refuses
it for good (D5: a delivered part keeps no payload).

A tenant's loop with nothing to claim sleeps until it is woken: at once by
the intake that stored its parts (``wake_up``), or by the one survey of the
outbox for all tenants (every ``SURVEY_S``), which finds what no intake of
this process announced: a retry fallen due, another replica's part, a lease
run out. One read of the queue a second for the whole process
(``Outbox.survey``), not a claim a second per tenant, each a hand-over to a
worker thread and back for nothing, and on PostgreSQL a query per tenant
per replica."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import aiohttp

from gateway.audit import AuditSink, PushDeadLetterEvent, PushDeliveredEvent
from gateway.core.breach import KIND as BREACH_KIND
from gateway.core.push.days import FORMAT as DAYS_FORMAT
from gateway.core.push.days import KIND as DAYS_KIND
from gateway.metrics import GatewayMetrics
from gateway.problem import new_incident_id
from gateway.push._outbox import Outbox
from gateway.push._parts import Part, RetryPolicy
from gateway.tasks import cancel_and_wait

log = logging.getLogger("gateway.push")
LOCKBOX_KIND = "lockbox-notification"
# Parts that carry one notification document, not pushed records.
NOTICE_KINDS = frozenset({BREACH_KIND, LOCKBOX_KIND})
# Receiver answers that will not get better by retrying (a poison part).
_PERMANENT = frozenset({400, 401, 403, 404, 409, 410, 413, 415, 422})
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode
SURVEY_S = 1.0  # the outbox surveyed for due parts of every tenant, and the gauges


def delivery_body(part: Part, records: bytes) -> bytes:
    """What the receiver gets: the stored array inside its envelope, not re-encoded.
    ``{"batch_id", "tenant", "kind", "records": [...]}``, or for meter-days
    ``{..., "format": "meter-days/v1", "readings": n, "meter_days": [...]}``,
    for a breach notification ``{..., "notification": {...}}``."""
    head = _COMPACT({"batch_id": part.batch_id, "tenant": part.tenant, "kind": part.kind})
    if part.kind in NOTICE_KINDS:  # the stored part is the notification document
        member = ',"notification":'
    elif part.kind == DAYS_KIND:
        member = f',"format":"{DAYS_FORMAT}","readings":{part.records},"meter_days":'
    else:
        member = ',"records":'
    return b"".join((head[:-1].encode(), member.encode(), records, b"}"))


class Delivery:
    def __init__(self, *, outbox: Outbox, endpoints: Mapping[str, str],
                 client_tls: ssl.SSLContext, metrics: GatewayMetrics, audit: AuditSink,
                 retry: RetryPolicy, lease: timedelta, clock: Callable[[], datetime]) -> None:
        self.outbox = outbox
        self.endpoints = endpoints
        self.client_tls = client_tls
        self.metrics = metrics
        self.audit = audit
        self.retry = retry
        self.lease = lease
        self.clock = clock
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.surveys = 0  # surveys of the outbox read (tests)

    def wake_up(self, tenant: str) -> None:
        """New parts for ``tenant``: its loop claims them at once."""
        event = self._wake.get(tenant)
        if event is not None:
            event.set()

    async def start(self) -> None:
        released = await asyncio.to_thread(self.outbox.release_mine)
        if released:
            log.warning("took back %d outbox parts this replica held when it stopped", released)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_tls, limit_per_host=4),
            timeout=aiohttp.ClientTimeout(total=30, sock_connect=3))
        for tenant in self.endpoints:
            self._wake[tenant] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._deliver_loop(tenant)))
        self._tasks.append(asyncio.create_task(self._survey_loop()))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._session is not None:
            await self._session.close()

    async def _deliver_loop(self, tenant: str) -> None:
        wake = self._wake[tenant]
        while True:
            try:
                await self._deliver_round(tenant, wake)
            except Exception:  # the database away, a bug: the parts stay; try again
                log.exception("delivery to %s failed; trying again in a second", tenant)
                await asyncio.sleep(1.0)

    async def _deliver_round(self, tenant: str, wake: asyncio.Event) -> None:
        """Claim what is due for ``tenant``, deliver it, or wait for news."""
        # Cleared before the claim, not after: news that comes while the
        # claim runs sets it again, and the next round claims at once.
        wake.clear()
        claimed_at = self.clock()
        parts = await asyncio.to_thread(self.outbox.claim, tenant, 4, self.lease)
        for part in parts:
            self.metrics.outbox_claims.labels(
                "reclaimed" if part.reclaimed else "claimed").inc()
        if not parts:
            self.metrics.outbox_claims.labels("empty").inc()
        for part in parts:
            # Still ours? (A stall past the lease lets another replica take it
            # over: then it is theirs to deliver.) Within the first quarter of
            # the lease the claim's own lease stands: renewing it would only
            # rewrite the row once more (a write and a commit per part); the
            # acknowledgement is fenced by the lease either way.
            if self.clock() - claimed_at >= self.lease / 4 and not await asyncio.to_thread(
                    self.outbox.renew, part, self.lease):
                self.metrics.outbox_claims.labels("lost").inc()
                continue
            await self._deliver(part)
        if not parts:
            # Woken by the intake (new parts) or the survey (due ones).
            await wake.wait()

    async def _deliver(self, part: Part) -> None:
        assert self._session is not None
        # Decrypt off the event loop; the stored bytes go out as they are.
        body = delivery_body(part, await asyncio.to_thread(self.outbox.payload_bytes, part))
        try:
            async with self._session.post(
                    self.endpoints[part.tenant],
                    # A BytesIO, not the bytes: aiohttp writes a large body in
                    # chunks (and warns of raw bytes over 1 MiB, which a part may be).
                    data=aiohttp.BytesIOPayload(io.BytesIO(body),
                                                content_type="application/json"),
                    headers={"Idempotency-Key": part.id}) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, error = 0, type(exc).__name__
        else:
            error = f"http-{status}"
        if 200 <= status < 300:
            if not await asyncio.to_thread(self.outbox.acknowledged, part.id, part.lease):
                # Fenced: another replica holds the part now and delivers it
                # again, under the same Idempotency-Key; the receiver dedupes.
                self.metrics.outbox_claims.labels("lost").inc()
                log.warning("part %s delivered after its lease was taken over", part.id)
                return
            self.metrics.delivery_attempts.labels(part.tenant, "ok").inc()
            if part.kind not in NOTICE_KINDS:  # pushed records only
                self.metrics.push_records.labels(self._source(part), part.tenant,
                                                 "delivered").inc(part.records)
            self.audit.record(PushDeliveredEvent(
                incident=new_incident_id(), tenant=part.tenant, batch_id=part.batch_id,
                records=part.records, attempts=part.attempts + 1))
            return
        permanent = status in _PERMANENT
        outcome = await asyncio.to_thread(self.outbox.failed, part, error, self.retry,
                                          permanent=permanent)
        if outcome == "lost":
            self.metrics.outbox_claims.labels("lost").inc()
            return
        self.metrics.delivery_attempts.labels(
            part.tenant, "rejected" if permanent else "error").inc()
        if outcome == "dead":
            if part.kind not in NOTICE_KINDS:
                self.metrics.push_records.labels(self._source(part), part.tenant,
                                                 "dead_letter").inc(part.records)
            self.audit.record(PushDeadLetterEvent(
                incident=new_incident_id(), tenant=part.tenant, batch_id=part.batch_id,
                records=part.records, error=error))
            log.error("part %s is a dead letter after %s", part.id, error)

    def _source(self, part: Part) -> str:
        return part.source or "unknown"

    async def _survey_loop(self) -> None:
        while True:
            try:
                due, stats = await asyncio.to_thread(self.outbox.survey)
            except Exception:  # the database away: the gauges keep their last values
                log.warning("outbox not readable for its survey", exc_info=True)
            else:
                self.surveys += 1
                for tenant in due:
                    self.wake_up(tenant)
                for tenant in self.endpoints:
                    pending, age, _dead = stats.get(tenant, (0, 0.0, 0))
                    self.metrics.outbox_pending.labels(tenant).set(pending)
                    self.metrics.outbox_oldest_age.labels(tenant).set(age)
            await asyncio.sleep(SURVEY_S)
