"""The audit event kinds (D10): one frozen class per kind the gateway
records, each built in one place and turned into the members of its line by
one hand-written ``as_record()``.

What a line holds is the spec (``docs/audit-format.md``): the writer
canonicalises the record, so the names, the JSON types and which members are
present are the contract, byte for byte. Rules every kind keeps:

- a member written as ``null`` is always written (``"principal": null`` on a
  refused anonymous request); a member that is absent is never written as
  ``null`` (an admin event without a second actor has no ``approved_by``);
- who, what, the decision and ids only: never a payload, never a secret
  (D10). There is no free-form mapping on any kind;
- ``as_record()`` returns a fresh dict (the writer adds ``ts``, ``seq``,
  ``prev`` to it) and copies no more than the lists and maps it writes: the
  request event is built on every data-plane request.

Not here: the records the chain writes itself (checkpoints, the
``audit-key-change`` handover, format §6) are format records, written by
:class:`gateway.audit._chain.ChainedAuditLog` as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from gateway.audit._format import PRUNE_EVENT

__all__ = ["ADMIN_EXTRA_FIELDS", "AdminEvent", "AuditEvent", "BreachNotificationEvent",
           "CmhFanoutEvent", "LockboxEvent", "PruneEvent",
           "PushBatchEvent", "PushDeadLetterEvent", "PushDeliveredEvent", "PushPartOutcome",
           "RequestEvent", "RetentionEvent"]

MAX_RESOURCES = 20  # resource ids named per request event (D10: ids, bounded)


class RequestEvent(NamedTuple):
    """Every data-plane request, served or refused (DESIGN §3, last stage).
    Without a caller or a route their members are written as ``null``.

    A NamedTuple, where the other kinds are frozen dataclasses: it is built on
    every request, and a frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field) costs about three times as much."""

    incident: str
    tenant: str
    principal: str | None
    cert_serial: str | None
    cert_fingerprint: str | None
    method: str
    route: str | None
    upstream: str
    decision: Literal["allow", "deny"]
    reason: str
    status: int
    resources: tuple[str, ...]  # the first MAX_RESOURCES are written
    bytes_in: int
    bytes_out: int
    classification: str | None  # D11 label of the answer
    # The gateway's own isolation prober asked (gateway.canary): written only
    # when true, and left out of usage (D10: it is no tenant's use).
    canary: bool = False

    def as_record(self) -> dict[str, Any]:
        """The event's members: those of its chain line but the log's own."""
        record = self.chain_fields(0.0, 0, "")
        del record["ts"], record["seq"], record["prev"]
        return record

    def chain_fields(self, ts: float, seq: int, prev: str) -> dict[str, Any]:
        """The members of this event's chain line (its record with the log's
        ``ts``, ``seq`` and ``prev``), inserted in sorted key order, so that
        ``canonical_request`` writes them as they come, with no sort
        (tests/audit/test_canonical.py holds it to ``canonical``)."""
        (incident, tenant, principal, cert_serial, cert_fingerprint, method, route, upstream,
         decision, reason, status, resources, bytes_in, bytes_out, classification,
         canary) = self
        fields: dict[str, Any] = {
            "bytes_in": bytes_in, "bytes_out": bytes_out, "cert_fingerprint": cert_fingerprint,
            "cert_serial": cert_serial, "classification": classification,
            "decision": decision, "event": "request", "incident": incident, "method": method,
            "prev": prev, "principal": principal, "reason": reason,
            "resources": list(resources[:MAX_RESOURCES]), "route": route, "seq": seq,
            "status": status, "tenant": tenant, "ts": ts, "upstream": upstream}
        if canary:  # "canary" sorts third: the prober's lines only, sorted here
            fields["canary"] = True
            fields = dict(sorted(fields.items()))
        return fields


# The named fields an admin event may add (D6: who asked, who approved or
# denied, the pending item; the method of a request no admin route took).
# Each is written only when given.
ADMIN_EXTRA_FIELDS = ("requested_by", "approved_by", "denied_by", "pending_action", "pending",
                      "method")
_ADMIN_BASE = frozenset({"event", "incident", "actor", "action", "target", "reason",
                         "outcome", "detail"})


@dataclass(frozen=True, slots=True)
class AdminEvent:
    """An admin-plane action or an action the gateway takes on its own
    (``actor`` ``"gateway"``): attempt, outcome, refusal or error."""

    incident: str
    actor: str
    action: str
    target: str
    reason: str
    outcome: str  # attempt, pending, done, refused, error
    detail: str = ""
    requested_by: str | None = None
    approved_by: str | None = None
    denied_by: str | None = None
    pending_action: str | None = None
    pending: str | None = None
    method: str | None = None

    @classmethod
    def build(cls, *, incident: str, actor: str, action: str, target: str, reason: str,
              outcome: str, detail: str = "",
              extra: Mapping[str, str] | None = None) -> AdminEvent:
        """``extra`` names D6 fields (``ADMIN_EXTRA_FIELDS``). A base member
        named there is ignored: it never replaces the actor, the action, ...
        Any other name is refused (D10: named fields only)."""
        named: dict[str, str] = {}
        for name, value in (extra or {}).items():
            if name in _ADMIN_BASE:
                continue
            if name not in ADMIN_EXTRA_FIELDS:
                raise ValueError(f"an admin audit event has no field {name!r}")
            named[name] = value
        return cls(incident, actor, action, target, reason, outcome, detail, **named)

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event": "admin", "incident": self.incident, "actor": self.actor,
            "action": self.action, "target": self.target, "reason": self.reason,
            "outcome": self.outcome, "detail": self.detail}
        if self.requested_by is not None:
            record["requested_by"] = self.requested_by
        if self.approved_by is not None:
            record["approved_by"] = self.approved_by
        if self.denied_by is not None:
            record["denied_by"] = self.denied_by
        if self.pending_action is not None:
            record["pending_action"] = self.pending_action
        if self.pending is not None:
            record["pending"] = self.pending
        if self.method is not None:
            record["method"] = self.method
        return record


@dataclass(frozen=True, slots=True)
class PushPartOutcome:
    """One tenant's part of a pushed batch, as the push-batch event lists it."""

    tenant: str
    records: int
    status: str  # queued, already-queued, refused-no-endpoint, refused-queue-full


@dataclass(frozen=True, slots=True)
class PushBatchEvent:
    """A batch pushed by a shared system (D5): how every record went. A
    ``meter-days`` batch also names its format and its meter-day count."""

    incident: str
    tenant: str  # the pushing system's tenant
    batch_id: str
    received: int
    queued: int
    quarantined: int
    refused: int
    quarantine_reasons: Mapping[str, int]
    parts: tuple[PushPartOutcome, ...]
    batch_format: str | None = None
    meter_days: int | None = None

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event": "push-batch", "incident": self.incident, "tenant": self.tenant,
            "batch_id": self.batch_id, "received": self.received, "queued": self.queued,
            "quarantined": self.quarantined, "refused": self.refused,
            "quarantine_reasons": dict(self.quarantine_reasons)}
        if self.batch_format is not None:
            record["format"] = self.batch_format
        if self.meter_days is not None:
            record["meter_days"] = self.meter_days
        record["parts"] = [{"tenant": p.tenant, "records": p.records, "status": p.status}
                           for p in self.parts]
        return record


@dataclass(frozen=True, slots=True)
class CmhFanoutEvent:
    """A Connect-My-Home booking fanned out per operator (D1), or quarantined
    because the trusted feed contradicts it. Only a quarantined booking has
    ``quarantine_reasons`` and ``connection`` (which may be ``null``)."""

    incident: str
    tenant: str
    request: str
    operators: tuple[str, ...]
    outcome: Literal["queued", "already-queued", "quarantined"]
    quarantine_reason: str | None = None
    connection: str | None = None

    @classmethod
    def queued(cls, *, incident: str, tenant: str, request: str, operators: tuple[str, ...],
               already_queued: bool) -> CmhFanoutEvent:
        return cls(incident, tenant, request, operators,
                   "already-queued" if already_queued else "queued")

    @classmethod
    def quarantined(cls, *, incident: str, tenant: str, request: str, reason: str,
                    connection: str | None) -> CmhFanoutEvent:
        return cls(incident, tenant, request, (), "quarantined", reason, connection)

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event": "cmh-fanout", "incident": self.incident, "tenant": self.tenant,
            "request": self.request, "operators": list(self.operators),
            "outcome": self.outcome}
        if self.quarantine_reason is not None:
            record["quarantine_reasons"] = {self.quarantine_reason: 1}
            record["connection"] = self.connection
        return record


@dataclass(frozen=True, slots=True)
class PushDeliveredEvent:
    """A part acknowledged by its tenant's endpoint (at-least-once, D5)."""

    incident: str
    tenant: str
    batch_id: str
    records: int
    attempts: int

    def as_record(self) -> dict[str, Any]:
        return {"event": "push-delivered", "incident": self.incident, "tenant": self.tenant,
                "batch_id": self.batch_id, "records": self.records,
                "attempts": self.attempts}


@dataclass(frozen=True, slots=True)
class PushDeadLetterEvent:
    """A part given up on: refused for good or out of attempts."""

    incident: str
    tenant: str
    batch_id: str
    records: int
    error: str  # an exception class name or http-<status>, never a body

    def as_record(self) -> dict[str, Any]:
        return {"event": "push-dead-letter", "incident": self.incident,
                "tenant": self.tenant, "batch_id": self.batch_id, "records": self.records,
                "error": self.error}


@dataclass(frozen=True, slots=True)
class BreachNotificationEvent:
    """A breach notification queued for the owner of records a withheld
    answer held (D1, D12): who is told, about which withheld request
    (``violation``, that request's incident id), who asked, how many
    records. Never a record, never a resource id."""

    incident: str
    tenant: str  # the owner told
    violation: str  # the incident id of the withheld request
    requested_by: str
    upstream: str
    route: str
    records: int
    delivery: Literal["queued", "no-endpoint"]  # to its receiver, or readable only

    def as_record(self) -> dict[str, Any]:
        return {"event": "breach-notification", "incident": self.incident,
                "tenant": self.tenant, "violation": self.violation,
                "requested_by": self.requested_by, "upstream": self.upstream,
                "route": self.route, "records": self.records, "delivery": self.delivery}


@dataclass(frozen=True, slots=True)
class LockboxEvent:
    """A step of the tenant lockbox (D7): a reached tenant told of a
    break-glass case (``lockbox-requested``), its consent given or refused
    by one of its ``lockbox-approver`` principals (``lockbox-approved``,
    ``lockbox-denied``), its time limit passed (``lockbox-expired``), its
    review of a skipped consent recorded (``lockbox-reviewed``), its consent
    no longer asked for once the case itself was denied (``lockbox-withdrawn``). ``principal``
    is who acted (``gateway`` for the gateway's own steps); ``notice`` the
    incident id of the notification the tenant was sent. Never a password."""

    incident: str
    action: Literal["lockbox-requested", "lockbox-approved", "lockbox-denied",
                    "lockbox-expired", "lockbox-reviewed", "lockbox-withdrawn"]
    case: str
    account: str
    tenant: str  # the reached tenant
    principal: str  # who acted: its lockbox-approver, or "gateway"
    requested_by: str  # the break-glass requester, "tenant/kind/name"
    mode: str  # the tenant's lockbox mode: notify | approve
    status: str  # the entry's state after the step
    emergency: bool
    reason: str  # the approver's reason or review notes; the gateway's reason code
    notice: str

    def as_record(self) -> dict[str, Any]:
        return {"event": "lockbox", "incident": self.incident, "action": self.action,
                "case": self.case, "account": self.account, "tenant": self.tenant,
                "principal": self.principal, "requested_by": self.requested_by,
                "mode": self.mode, "status": self.status, "emergency": self.emergency,
                "reason": self.reason, "notice": self.notice}


@dataclass(frozen=True, slots=True)
class PruneEvent:
    """Sealed segments about to be deleted by policy (format §10): the
    anchor that the oldest remaining file starts at, and why."""

    segments: tuple[str, ...]
    pruned_from_seq: int
    pruned_through_seq: int
    anchor_seq: int
    anchor_hash: str
    policy: str
    rolled_up_through: float

    @classmethod
    def of(cls, *, segments: tuple[str, ...], first_seq: int, anchor_seq: int,
           anchor_hash: str, retention_days: float, rolled_up_through: float) -> PruneEvent:
        """Segments from ``first_seq`` up to the anchor, exclusive: the
        anchor line stays, as the first line of the next file."""
        return cls(segments, first_seq, anchor_seq - 1, anchor_seq, anchor_hash,
                   f"raw_retention_days={retention_days:g}", rolled_up_through)

    def as_record(self) -> dict[str, Any]:
        return {"event": PRUNE_EVENT, "actor": "gateway", "action": "prune",
                "segments": list(self.segments), "pruned_from_seq": self.pruned_from_seq,
                "pruned_through_seq": self.pruned_through_seq, "anchor_seq": self.anchor_seq,
                "anchor_hash": self.anchor_hash, "policy": self.policy,
                "rolled_up_through": self.rolled_up_through}


@dataclass(frozen=True, slots=True)
class RetentionEvent:
    """Data the retention policy is about to delete (D8, D10), recorded
    before it goes, so nothing is deleted silently: which category, how
    many, the oldest of them and the cut-off, under which policy. A deleted
    principal is named with when it was disabled (its tombstone); erased
    dead letters with their parts and record count; consultations are only
    counted (never who was looked up)."""

    incident: str
    category: str  # dead-letter-payloads | disabled-principals | consultations
    count: int
    oldest: float  # the oldest death, disabling or consultation, seconds since the epoch
    cutoff: float  # everything at or before it is due
    policy: str  # "<key>=<days>" of [retention]
    reason: str
    principal: str | None = None  # disabled-principals: "tenant/kind/name"
    disabled_by: str | None = None
    parts: tuple[str, ...] | None = None  # dead-letter-payloads: the part ids
    records: int | None = None  # ... and the records they held

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event": "retention", "incident": self.incident, "actor": "gateway",
            "action": "erase-payload" if self.category == "dead-letter-payloads" else "delete",
            "category": self.category, "count": self.count, "oldest": self.oldest,
            "cutoff": self.cutoff, "policy": self.policy, "reason": self.reason}
        if self.principal is not None:
            record["principal"] = self.principal
            record["disabled_at"] = self.oldest
        if self.disabled_by is not None:
            record["disabled_by"] = self.disabled_by
        if self.parts is not None:
            record["parts"] = list(self.parts[:MAX_RESOURCES])
        if self.records is not None:
            record["records"] = self.records
        return record


@dataclass(frozen=True, slots=True)
class FleetCheckpointEvent:
    """The newest fleet checkpoint this replica saw (format §13): recorded in
    its own chain, so its next checkpoint vouches for it."""

    n: int
    fleet_hash: str  # SHA-256 of the fleet checkpoint's record ("hash" is the line's own)

    def as_record(self) -> dict[str, Any]:
        return {"event": "fleet-checkpoint", "actor": "gateway", "n": self.n,
                "fleet_hash": self.fleet_hash}


AuditEvent = (RequestEvent | AdminEvent | PushBatchEvent | CmhFanoutEvent
              | PushDeliveredEvent | PushDeadLetterEvent | BreachNotificationEvent | PruneEvent
              | RetentionEvent | LockboxEvent
              | FleetCheckpointEvent)
"""What :class:`gateway.audit.AuditSink` records: one of the kinds above."""
