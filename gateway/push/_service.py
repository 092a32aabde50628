"""Pushed data: intake, back-pressure and notices (delivery: gateway.push._delivery).

The HES posts a daily batch to ``POST /push/hes/batches``. The pure router
(:mod:`gateway.core.push.records`) gives every record to the tenant owning the meter
at the reading's time, or to quarantine with a reason. Each tenant's part is
stored, encrypted, in the outbox in one transaction; the answer accounts for
every record. One delivery loop per tenant drains its own queue, so a
receiver that is down or slow fills only its own queue; a tenant whose queue
is full gets its records refused (429, the HES re-posts them) rather than
dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from gateway.audit import (
    AuditSink,
    BreachNotificationEvent,
    CmhFanoutEvent,
    PushBatchEvent,
    PushPartOutcome,
)
from gateway.clock import utc_now
from gateway.core.breach import KIND as BREACH_KIND
from gateway.core.breach import BreachNotice
from gateway.core.jsonlimits import (
    MAX_DEPTH,
    check_depth,
    loads_limited,
    unique_object,
)
from gateway.core.model import Caller
from gateway.core.push.canonical import batch_fingerprint, encode_days, encode_routed
from gateway.core.push.days import FORMAT as DAYS_FORMAT
from gateway.core.push.days import KIND as DAYS_KIND
from gateway.core.push.days import RoutedDays, route_meter_days
from gateway.core.push.fanout import FanoutRejected, booking_quarantine, split_request
from gateway.core.push.posted import route_posted_days
from gateway.core.push.readings import (
    ReadingsBatch,
    batch_encoders,
    decode_readings,
    route_readings,
)
from gateway.core.push.records import (
    ISOLATION_REASONS_PUSH,
    BatchRejected,
    Quarantined,
    route_batch,
)
from gateway.core.push.scan import Spans, scan_days
from gateway.core.push.trust import may_push
from gateway.core.relations.index import RelationIndex
from gateway.errors import RequestRefused
from gateway.metrics import GatewayMetrics
from gateway.problem import new_incident_id
from gateway.push._delivery import LOCKBOX_KIND, Delivery
from gateway.push._outbox import Outbox
from gateway.push._parts import EncodedPart, RetryPolicy, part_key

log = logging.getLogger("gateway.push")
# A booking naming another coordinator or operator than the feed: misrouting (D1).
ISOLATION_REASONS_CMH = frozenset({"coordinator-mismatch", "operator-mismatch"})
DEFAULT_RETRY = RetryPolicy()
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode
# The source of breach notifications' batches: not a tenant id (those are
# [a-z0-9-]), so no pushing system can occupy an incident's batch id (D1).
BREACH_SOURCE = "gateway:breach"
# Tenant lockbox notices (D7): the same path, their own source and part kind.
LOCKBOX_SOURCE = "gateway:lockbox"
NOTIFICATIONS_MAX = 100  # GET /notifications lists at most this many


def _encoder(records: Sequence[Any]) -> Callable[[], bytes]:
    """A part of per-record readings: encoded once, when it is stored."""
    return lambda: encode_routed(records)


def _joiner(meter_days: Sequence[str]) -> Callable[[], bytes]:
    """A part of meter-days: their texts are JSON already (ASCII)."""
    return lambda: encode_days(meter_days)


class PushService:
    def __init__(self, *, outbox: Outbox, relations: Callable[[], RelationIndex],
                 endpoints: Mapping[str, str], client_tls: ssl.SSLContext,
                 metrics: GatewayMetrics, audit: AuditSink,
                 max_pending_records: int = 5_000_000, retry: RetryPolicy = DEFAULT_RETRY,
                 lease_s: float = 60.0,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.outbox = outbox
        self.relations = relations
        self.endpoints = dict(endpoints)
        self.client_tls = client_tls
        self.metrics = metrics
        self.audit = audit
        self.max_pending_records = max_pending_records
        self.retry = retry
        # A claim's lease: long enough for one delivery (its timeout is 30 s),
        # renewed before each one.
        self.lease = timedelta(seconds=lease_s)
        self.clock = clock
        self.delivery = Delivery(outbox=outbox, endpoints=self.endpoints, client_tls=client_tls,
                                 metrics=metrics, audit=audit, retry=retry, lease=self.lease,
                                 clock=clock)

    # -- intake ----------------------------------------------------------------
    @staticmethod
    def authorize(caller: Caller, intake: str) -> None:
        """D1: only the pushers of the shared system that declares ``intake``
        (``push_intake`` in its tenant file). Needs no body: called before it is read."""
        decision = may_push(caller, intake)
        if not decision.allowed:
            raise RequestRefused(decision.status, decision.reason)

    def intake(self, caller: Caller, raw: bytes) -> tuple[int, dict[str, Any], str]:
        """Route and enqueue one batch; returns (status, accounting, incident).
        The batch's ``format`` chooses the router: absent, one record per reading;
        ``meter-days/v1``, one object per meter-day (gateway.core.push.days)."""
        self.authorize(caller, "hes")
        text: str | None = None
        spans = None
        # A per-record batch of well-typed records: its fast path, the same
        # outcome. What it takes nests three deep (no nesting check needed).
        typed = decode_readings(raw)
        if typed is not None:
            return self._intake_readings(caller, typed)
        # A columnar batch in its common spelling: read and routed in one pass
        # from the posted bytes (C); None leaves it to the parse below.
        posted = route_posted_days(raw, self.relations(), self.clock(), max_depth=MAX_DEPTH)
        if posted is not None:
            return self._enqueue_days(caller, raw, posted)
        try:
            # Nesting capped before a parser recurses (meter-days too): 400, not 500.
            try:
                text = raw.decode()
            except UnicodeDecodeError:  # UTF-16/32: json.loads finds the encoding
                check_depth(raw, MAX_DEPTH)
                batch = json.loads(raw, object_pairs_hook=unique_object)
            else:
                batch, spans = scan_days(text, MAX_DEPTH)  # the nesting check within
        except ValueError as exc:  # UnicodeDecodeError too
            # D1: meter-days go out as posted; one reading per key, or none.
            raise RequestRefused.for_body(exc) from exc
        if isinstance(batch, Mapping) and batch.get("format") is not None:
            return self._intake_days(caller, raw, batch, text, spans)
        try:
            routed = route_batch(batch, self.relations(), self.clock())
        except BatchRejected as exc:
            raise RequestRefused.from_core(exc) from exc
        # The per-record format's contract: the fingerprint is of the content, not of its spelling.
        fingerprint = batch_fingerprint(routed.batch_id, batch["records"],
                                        raw if text is not None else None)
        parts = [(tenant, len(records), _encoder(records))
                 for tenant, records in sorted(routed.parts.items())]
        return self._enqueue(caller, routed.batch_id, fingerprint, routed.received,
                             routed.quarantined, parts, "hes-readings", {})

    def _intake_readings(self, caller: Caller, batch: ReadingsBatch
                         ) -> tuple[int, dict[str, Any], str]:
        """A per-record batch of well-typed records (gateway.core.push.readings):
        the outcome, fingerprint and parts of the general path, from structs."""
        try:
            routed = route_readings(batch, self.relations(), self.clock())
        except BatchRejected as exc:
            raise RequestRefused.from_core(exc) from exc
        fingerprint, encoders = batch_encoders(routed, batch.records)
        parts = [(tenant, len(records), encoders[tenant])
                 for tenant, records in sorted(routed.parts.items())]
        return self._enqueue(caller, routed.batch_id, fingerprint, routed.received,
                             routed.quarantined, parts, "hes-readings", {})

    def _intake_days(self, caller: Caller, raw: bytes, batch: Mapping[str, Any],
                     text: str | None, spans: Spans | None) -> tuple[int, dict[str, Any], str]:
        try:
            routed = route_meter_days(batch, self.relations(), self.clock(), text=text,
                                      spans=spans)
        except BatchRejected as exc:
            raise RequestRefused.from_core(exc) from exc
        return self._enqueue_days(caller, raw, routed)

    def _enqueue_days(self, caller: Caller, raw: bytes, routed: RoutedDays
                      ) -> tuple[int, dict[str, Any], str]:
        # The bytes as posted: a re-post must be byte for byte the same batch.
        fingerprint = "sha256-body:" + hashlib.sha256(raw).hexdigest()
        parts = [(tenant, part.readings, _joiner(part.meter_days))
                 for tenant, part in sorted(routed.parts.items())]
        return self._enqueue(caller, routed.batch_id, fingerprint, routed.received,
                             routed.quarantined, parts, DAYS_KIND,
                             {"format": DAYS_FORMAT, "meter_days": routed.meter_days})

    def _enqueue(self, caller: Caller, batch_id: str, fingerprint: str, received: int,
                 quarantine: tuple[Quarantined, ...],
                 parts: list[tuple[str, int, Callable[[], bytes]]], kind: str,
                 extra: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        """Store what is routed (one transaction), answer for every reading."""
        source = caller.tenant.id
        # D1: batch ids are the source system's own namespace.
        known = self.outbox.batch(batch_id, source)
        if known is not None and known["fingerprint"] != fingerprint:
            raise RequestRefused(409, "batch-id-reused-with-other-content")
        incident = new_incident_id()
        parts_out, outcomes, to_store = [], [], []
        queued = refused = 0
        for tenant, count, encode in parts:
            stored = (self.outbox.part_of(source, batch_id, tenant) if known is not None
                      else None)
            part_id = stored[0] if stored else part_key(source, batch_id, tenant)
            if stored is not None:
                status = "already-queued"  # an idempotent re-post
                queued += count
            elif tenant not in self.endpoints:
                status = "refused-no-endpoint"
                refused += count
            elif self.outbox.pending_records(tenant) + count > self.max_pending_records:
                # Back-pressure, this tenant only. In a fleet the bound is read,
                # not locked: replicas taking batches for one tenant at once
                # may each pass it, by at most those batches.
                status = "refused-queue-full"
                refused += count
            else:
                status = "queued"
                queued += count
                to_store.append(EncodedPart(part_id, tenant, kind, count, encode()))
            parts_out.append({"tenant": tenant, "records": count, "status": status,
                              "idempotency_key": part_id})
            outcomes.append(PushPartOutcome(tenant, count, status))
        quarantined = sum(q.count for q in quarantine)
        if to_store or known is None:
            new = self.outbox.enqueue_encoded(
                batch_id=batch_id, source=source, fingerprint=fingerprint, received=received,
                quarantined=quarantined, parts=to_store, existing=known is not None)
            if not new:
                # The same batch id pushed to another replica at once was stored
                # first (the unique key): answer as for a re-post of it (D1).
                return self._enqueue(caller, batch_id, fingerprint, received, quarantine,
                                     parts, kind, extra)
        for part in to_store:
            self.metrics.push_records.labels(source, part.tenant, "queued").inc(part.records)
            self.delivery.wake_up(part.tenant)
        violations = sum(q.count for q in quarantine if q.reason in ISOLATION_REASONS_PUSH)
        if violations:
            self.metrics.isolation_violations.labels(source, "push", "push").inc(violations)
        if quarantined and known is None:
            self.metrics.push_records.labels(source, "none", "quarantined").inc(quarantined)
        reasons: dict[str, int] = {}
        for q in quarantine:
            reasons[q.reason] = reasons.get(q.reason, 0) + q.count
        self.audit.record(PushBatchEvent(
            incident=incident, tenant=source, batch_id=batch_id, received=received,
            queued=queued, quarantined=quarantined, refused=refused,
            quarantine_reasons=reasons, parts=tuple(outcomes),
            batch_format=extra.get("format"), meter_days=extra.get("meter_days")))
        if kind == DAYS_KIND:
            listed = [{"index": q.index, "first": q.first, "count": q.count,
                       "reason": q.reason, "meter": q.meter} for q in quarantine]
        else:
            listed = [{"index": q.index, "reason": q.reason, "meter": q.meter}
                      for q in quarantine]
        doc = {"batch_id": batch_id, "received": received, "queued": queued,
               "quarantined": quarantined, "refused": refused, **extra,
               "parts": parts_out, "incident": incident, "quarantine": listed}
        # Every reading accounted for: queued + quarantined + refused == received.
        assert queued + quarantined + refused == received
        return (429 if refused else 202), doc, incident

    def intake_cmh(self, caller: Caller, raw: bytes, tenant_kinds: Mapping[str, str],
                   coordinators: frozenset[str]) -> tuple[int, dict[str, Any], str]:
        """A household request booked on the portal, fanned out per operator,
        once the trusted feed confirms its coordinator and operators (D1)."""
        self.authorize(caller, "cmh")
        try:
            request = loads_limited(raw, max_depth=MAX_DEPTH)
            fanout = split_request(request, tenant_kinds, coordinators)
        except ValueError as exc:  # UnicodeDecodeError too
            raise RequestRefused.for_body(exc) from exc
        except FanoutRejected as exc:
            raise RequestRefused.from_core(exc) from exc
        mismatch = booking_quarantine(request, self.relations(), self.clock())
        if mismatch is not None:
            return self._quarantine_booking(caller, fanout.request_id, fanout.coordinator,
                                            *mismatch)
        missing = sorted(t for t in fanout.parts if t not in self.endpoints)
        if missing:
            raise RequestRefused(409, "operator-without-endpoint")
        fingerprint = hashlib.sha256(raw).hexdigest()
        source, batch_id = caller.tenant.id, f"cmh/{fanout.request_id}"
        known = self.outbox.batch(batch_id, source)
        if known is not None and known["fingerprint"] != fingerprint:
            raise RequestRefused(409, "request-id-reused-with-other-content")
        incident = new_incident_id()
        store = [(part_key(source, batch_id, t), t, "cmh-request", [part])
                 for t, part in sorted(fanout.parts.items())]
        if known is None:
            stored = self.outbox.enqueue(batch_id=batch_id, source=source,
                                         fingerprint=fingerprint, received=1, quarantined=0,
                                         parts=store)
            if not stored:
                # Stored meanwhile through another replica: answer as for a re-post.
                return self.intake_cmh(caller, raw, tenant_kinds, coordinators)
            for _, tenant, _, _ in store:
                self.delivery.wake_up(tenant)
        self.audit.record(CmhFanoutEvent.queued(
            incident=incident, tenant=caller.tenant.id, request=fanout.request_id,
            operators=tuple(sorted(fanout.parts)), already_queued=known is not None))
        return 202, {"request": fanout.request_id, "coordinator": fanout.coordinator,
                     "operators": sorted(fanout.parts), "queued": 1, "quarantined": 0,
                     "quarantine": [], "incident": incident}, incident

    def _quarantine_booking(self, caller: Caller, request_id: str, coordinator: str,
                            reason: str, connection: str | None
                            ) -> tuple[int, dict[str, Any], str]:
        """A booking the feed contradicts goes to nobody; it is not stored, so the
        portal may post the corrected booking under the same id."""
        source = caller.tenant.id
        incident = new_incident_id()
        self.metrics.push_records.labels(source, "none", "quarantined").inc()
        if reason in ISOLATION_REASONS_CMH:
            self.metrics.isolation_violations.labels(source, "push", "push").inc()
        self.audit.record(CmhFanoutEvent.quarantined(
            incident=incident, tenant=source, request=request_id, reason=reason,
            connection=connection))
        return 202, {"request": request_id, "coordinator": coordinator, "operators": [],
                     "queued": 0, "quarantined": 1,
                     "quarantine": [{"reason": reason, "connection": connection}],
                     "incident": incident}, incident

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
            self.delivery.wake_up(coordinator)

    # -- breach notifications (D1, D12) ------------------------------------------------
    def notify_breach(self, notices: Sequence[BreachNotice],
                      contact: Callable[[str], str | None]) -> int:
        """Queue one incident's notices, one per owner: each stored as the
        document its owner reads at ``GET /notifications`` and, where the
        owner has a receiver, as a part delivered to it under the
        ``Idempotency-Key`` ``gateway:breach/<incident>/<owner>``. Exactly
        once per incident: processed again, nothing is stored, counted or
        audited a second time. Returns how many were queued now."""
        if not notices:
            return 0
        incident = notices[0].incident
        assert all(n.incident == incident for n in notices)
        rows: list[tuple[str, str, EncodedPart | None]] = []
        for notice in notices:
            document = _COMPACT(notice.document(contact(notice.owner)))
            part = None
            if notice.owner in self.endpoints:
                part = EncodedPart(part_key(BREACH_SOURCE, incident, notice.owner),
                                   notice.owner, BREACH_KIND, 1, document.encode())
            rows.append((notice.owner, document, part))
        if not self.outbox.enqueue_notifications(incident=incident, source=BREACH_SOURCE,
                                                 notices=rows):
            log.info("breach notifications of incident %s were queued before", incident)
            return 0
        for notice, (_, _, part) in zip(notices, rows, strict=True):
            self.metrics.breach_notifications.labels(notice.owner).inc()
            self.audit.record(BreachNotificationEvent(
                incident=new_incident_id(), tenant=notice.owner, violation=incident,
                requested_by=notice.requested_by, upstream=notice.shared_system,
                route=notice.route, records=notice.records,
                delivery="queued" if part is not None else "no-endpoint"))
            if part is not None:
                self.delivery.wake_up(notice.owner)
        return len(notices)

    def notify_tenants(self, incident: str,
                       documents: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
        """Queue one incident's tenant lockbox notices (D7) the way breach
        notices go: each stored as the document its tenant reads at ``GET
        /notifications`` and, where the tenant has a receiver, delivered
        under the ``Idempotency-Key`` ``gateway:lockbox/<incident>/<tenant>``.
        Exactly once per incident. Returns how many were queued now."""
        rows: list[tuple[str, str, EncodedPart | None]] = []
        for tenant, doc in documents:
            text = _COMPACT(doc)
            part = None
            if tenant in self.endpoints:
                part = EncodedPart(part_key(LOCKBOX_SOURCE, incident, tenant), tenant,
                                   LOCKBOX_KIND, 1, text.encode())
            rows.append((tenant, text, part))
        if not rows or not self.outbox.enqueue_notifications(
                incident=incident, source=LOCKBOX_SOURCE, notices=rows):
            return 0
        for tenant, _, part in rows:
            if part is not None:
                self.delivery.wake_up(tenant)
        return len(rows)

    def notifications(self, tenant: str, limit: int = NOTIFICATIONS_MAX) -> list[Any]:
        """``tenant``'s own breach notifications, newest first, at most
        :data:`NOTIFICATIONS_MAX`."""
        return [json.loads(doc) for doc in
                self.outbox.notifications(tenant, max(1, min(limit, NOTIFICATIONS_MAX)))]

    # -- delivery (gateway.push._delivery) ------------------------------------------
    async def start(self) -> None:
        await self.delivery.start()

    async def stop(self) -> None:
        await self.delivery.stop()
