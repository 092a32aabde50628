"""Pushed data: intake, per-tenant delivery over mTLS, back-pressure (issue 5).

The HES posts a daily batch to ``POST /push/hes/batches``. The pure router
(:mod:`gateway.core.push`) gives every record to the tenant owning the meter
at the reading's time, or to quarantine with a reason. Each tenant's part is
stored, encrypted, in the outbox in one transaction; the answer accounts for
every record. One delivery loop per tenant drains its own queue, so a
receiver that is down or slow fills only its own queue; a tenant whose queue
is full gets its records refused (429, the HES re-posts them) rather than
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from gateway.audit import AuditSink
from gateway.core.fanout import FanoutRejected, split_request
from gateway.core.model import Caller
from gateway.core.push import ISOLATION_REASONS_PUSH, BatchRejected, batch_fingerprint, route_batch
from gateway.core.relations import RelationIndex
from gateway.errors import RequestRefused
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox, Part, RetryPolicy
from gateway.problem import new_incident_id

log = logging.getLogger("gateway.push")
PUSH_ROLE = "pusher"
# Receiver answers that will not get better by retrying (a poison part).
DEFAULT_RETRY = RetryPolicy()
_PERMANENT = frozenset({400, 401, 403, 404, 409, 410, 413, 415, 422})


class PushService:
    def __init__(self, *, outbox: Outbox, relations: Callable[[], RelationIndex],
                 endpoints: Mapping[str, str], client_tls: ssl.SSLContext,
                 metrics: GatewayMetrics, audit: AuditSink,
                 max_pending_records: int = 5_000_000, retry: RetryPolicy = DEFAULT_RETRY,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.outbox = outbox
        self.relations = relations
        self.endpoints = dict(endpoints)
        self.client_tls = client_tls
        self.metrics = metrics
        self.audit = audit
        self.max_pending_records = max_pending_records
        self.retry = retry
        self.clock = clock
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    # -- intake ----------------------------------------------------------------
    def intake(self, caller: Caller, raw: bytes) -> tuple[int, dict[str, Any], str]:
        """Route and enqueue one batch; returns (status, accounting, incident)."""
        if PUSH_ROLE not in caller.principal.roles or caller.tenant.kind != "shared-system":
            raise RequestRefused(403, "not-a-pusher")
        try:
            batch = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestRefused(400, "body-malformed-json") from exc
        try:
            routed = route_batch(batch, self.relations(), self.clock())
        except BatchRejected as exc:
            raise RequestRefused(exc.status, exc.reason) from exc
        source = caller.tenant.id
        fingerprint = batch_fingerprint(routed.batch_id, batch["records"])
        known = self.outbox.batch(routed.batch_id)
        if known is not None and known["fingerprint"] != fingerprint:
            raise RequestRefused(409, "batch-id-reused-with-other-content")
        incident = new_incident_id()
        parts_out, to_store = [], []
        queued = refused = 0
        for tenant, records in sorted(routed.parts.items()):
            part_id = f"{routed.batch_id}/{tenant}"
            if self.outbox.part_status(part_id) is not None:
                status = "already-queued"  # an idempotent re-post
                queued += len(records)
            elif tenant not in self.endpoints:
                status = "refused-no-endpoint"
                refused += len(records)
            elif self.outbox.pending_records(tenant) + len(records) > self.max_pending_records:
                status = "refused-queue-full"  # back-pressure: this tenant only
                refused += len(records)
            else:
                status = "queued"
                queued += len(records)
                to_store.append((part_id, tenant, "hes-readings", records))
            parts_out.append({"tenant": tenant, "records": len(records), "status": status,
                              "idempotency_key": part_id})
        if to_store or known is None:
            self.outbox.enqueue(batch_id=routed.batch_id, source=source,
                                fingerprint=fingerprint, received=routed.received,
                                quarantined=len(routed.quarantined), parts=to_store)
        for _, tenant, _, records in to_store:
            self.metrics.push_records.labels(source, tenant, "queued").inc(len(records))
            self._wake_up(tenant)
        violations = [q for q in routed.quarantined if q.reason in ISOLATION_REASONS_PUSH]
        if violations:
            self.metrics.isolation_violations.labels(source, "push", "push").inc(len(violations))
        if routed.quarantined and known is None:
            self.metrics.push_records.labels(source, "none", "quarantined").inc(
                len(routed.quarantined))
        reasons: dict[str, int] = {}
        for q in routed.quarantined:
            reasons[q.reason] = reasons.get(q.reason, 0) + 1
        self.audit.record({"event": "push-batch", "incident": incident, "tenant": source,
                           "batch_id": routed.batch_id, "received": routed.received,
                           "queued": queued, "quarantined": len(routed.quarantined),
                           "refused": refused, "quarantine_reasons": reasons,
                           "parts": [{k: p[k] for k in ("tenant", "records", "status")}
                                     for p in parts_out]})
        doc = {"batch_id": routed.batch_id, "received": routed.received, "queued": queued,
               "quarantined": len(routed.quarantined), "refused": refused,
               "parts": parts_out, "incident": incident,
               "quarantine": [{"index": q.index, "reason": q.reason, "meter": q.meter}
                              for q in routed.quarantined]}
        # Every record accounted for: queued + quarantined + refused == received.
        assert queued + len(routed.quarantined) + refused == routed.received
        return (429 if refused else 202), doc, incident

    def intake_cmh(self, caller: Caller, raw: bytes, tenant_kinds: Mapping[str, str],
                   coordinators: frozenset[str]) -> tuple[int, dict[str, Any], str]:
        """A household request booked on the portal, fanned out (issue 5 item 5)."""
        if PUSH_ROLE not in caller.principal.roles or caller.tenant.kind != "shared-system":
            raise RequestRefused(403, "not-a-pusher")
        try:
            fanout = split_request(json.loads(raw), tenant_kinds, coordinators)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestRefused(400, "body-malformed-json") from exc
        except FanoutRejected as exc:
            raise RequestRefused(422 if exc.reason == "ean-for-telecom" else 400,
                                 exc.reason) from exc
        missing = sorted(t for t in fanout.parts if t not in self.endpoints)
        if missing:
            raise RequestRefused(409, "operator-without-endpoint")
        fingerprint = hashlib.sha256(raw).hexdigest()
        known = self.outbox.batch(f"cmh/{fanout.request_id}")
        if known is not None and known["fingerprint"] != fingerprint:
            raise RequestRefused(409, "request-id-reused-with-other-content")
        incident = new_incident_id()
        store = [(f"cmh/{fanout.request_id}/{t}", t, "cmh-request", [part])
                 for t, part in sorted(fanout.parts.items())]
        if known is None:
            self.outbox.enqueue(batch_id=f"cmh/{fanout.request_id}", source=caller.tenant.id,
                                fingerprint=fingerprint, received=1, quarantined=0,
                                parts=store)
            for _, tenant, _, _ in store:
                self._wake_up(tenant)
        self.audit.record({"event": "cmh-fanout", "incident": incident,
                           "tenant": caller.tenant.id, "request": fanout.request_id,
                           "operators": sorted(fanout.parts),
                           "outcome": "queued" if known is None else "already-queued"})
        return 202, {"request": fanout.request_id, "coordinator": fanout.coordinator,
                     "operators": sorted(fanout.parts), "incident": incident}, incident

    def notify_status(self, request_id: str, connection: Mapping[str, Any],
                      coordinators: set[str], by: str) -> None:
        """An operator's status update flows to the coordinating DSO only (the
        portal has it already: the update went through the gateway to it)."""
        for coordinator in sorted(coordinators):
            if coordinator == by or coordinator not in self.endpoints:
                continue
            key = f"cmh/{request_id}/status/{connection.get('id')}/{new_incident_id()}"
            self.outbox.enqueue(batch_id=key, source=by, fingerprint=key, received=1,
                                quarantined=0,
                                parts=[(key, coordinator, "cmh-status",
                                        [{"request": request_id, "by": by,
                                          "connection": dict(connection)}])])
            self._wake_up(coordinator)

    # -- delivery ----------------------------------------------------------------
    def _wake_up(self, tenant: str) -> None:
        event = self._wake.get(tenant)
        if event is not None:
            event.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_tls, limit_per_host=4),
            timeout=aiohttp.ClientTimeout(total=30, sock_connect=3))
        for tenant in self.endpoints:
            self._wake[tenant] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._deliver_loop(tenant)))
        self._tasks.append(asyncio.create_task(self._stats_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    async def _deliver_loop(self, tenant: str) -> None:
        wake = self._wake[tenant]
        while True:
            parts = await asyncio.to_thread(self.outbox.due, tenant)
            for part in parts:
                await self._deliver(part)
            if not parts:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    # New parts wake the loop at once; the poll only catches retries.
                    await asyncio.wait_for(wake.wait(), timeout=1.0)

    async def _deliver(self, part: Part) -> None:
        assert self._session is not None
        body = {"batch_id": part.batch_id, "tenant": part.tenant, "kind": part.kind,
                "records": self.outbox.payload(part)}
        try:
            async with self._session.post(self.endpoints[part.tenant], json=body,
                                          headers={"Idempotency-Key": part.id}) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, error = 0, type(exc).__name__
        else:
            error = f"http-{status}"
        if 200 <= status < 300:
            self.outbox.acknowledged(part.id)
            self.metrics.delivery_attempts.labels(part.tenant, "ok").inc()
            self.metrics.push_records.labels(self._source(part), part.tenant,
                                             "delivered").inc(part.records)
            self.audit.record({"event": "push-delivered", "incident": new_incident_id(),
                               "tenant": part.tenant, "batch_id": part.batch_id,
                               "records": part.records, "attempts": part.attempts + 1})
            return
        permanent = status in _PERMANENT
        outcome = self.outbox.failed(part, error, self.retry, permanent=permanent)
        self.metrics.delivery_attempts.labels(
            part.tenant, "rejected" if permanent else "error").inc()
        if outcome == "dead":
            self.metrics.push_records.labels(self._source(part), part.tenant,
                                             "dead_letter").inc(part.records)
            self.audit.record({"event": "push-dead-letter", "incident": new_incident_id(),
                               "tenant": part.tenant, "batch_id": part.batch_id,
                               "records": part.records, "error": error})
            log.error("part %s is a dead letter after %s", part.id, error)

    def _source(self, part: Part) -> str:
        batch = self.outbox.batch(part.batch_id)
        return str(batch["source"]) if batch is not None else "unknown"

    async def _stats_loop(self) -> None:
        while True:
            stats = await asyncio.to_thread(self.outbox.stats)
            for tenant in self.endpoints:
                pending, age, _dead = stats.get(tenant, (0, 0.0, 0))
                self.metrics.outbox_pending.labels(tenant).set(pending)
                self.metrics.outbox_oldest_age.labels(tenant).set(age)
            await asyncio.sleep(1.0)
