"""The trace of everything (D10, D12): the typed audit event kinds, the audit
sink and the tamper-evident hash-chained log (``docs/audit-format.md``), its
reference verifier, its checkpoint keys and their rotation, pruning by policy,
usage rollups, and the security events for the SOC (file, webhook, RFC 5424
syslog).

A fleet's replicas ship their chains to PostgreSQL and the control plane
signs fleet checkpoints over them (``_fleet``, format §13).

May import: :mod:`gateway.errors`, :mod:`gateway.state` (the fleet's audit
tables) and the standard library; every other package may import it.
"""

from __future__ import annotations

from gateway.audit._chain import ChainedAuditLog, verify_log
from gateway.audit._events import (
    AdminEvent,
    AuditEvent,
    BreachNotificationEvent,
    CmhFanoutEvent,
    FleetCheckpointEvent,
    LockboxEvent,
    PruneEvent,
    PushBatchEvent,
    PushDeadLetterEvent,
    PushDeliveredEvent,
    PushPartOutcome,
    RequestEvent,
    RetentionEvent,
)
from gateway.audit._fleet import (
    AuditShipper,
    FleetResult,
    fleet_event,
    published_fleet_keys,
    sign_fleet_checkpoint,
    verify_fleet,
)
from gateway.audit._format import public_keys, segment_files, segments_dir
from gateway.audit._keys import AuditKeys, published_keys
from gateway.audit._prune import AuditPruner
from gateway.audit._sink import AuditSink, AuditWriteFailed
from gateway.audit._soc import SecurityEvents
from gateway.audit._syslog import SyslogSink
from gateway.audit._usage import UsageLedger

__all__ = [
    "AdminEvent",
    "AuditEvent",
    "AuditKeys",
    "AuditPruner",
    "AuditShipper",
    "AuditSink",
    "AuditWriteFailed",
    "BreachNotificationEvent",
    "ChainedAuditLog",
    "CmhFanoutEvent",
    "FleetCheckpointEvent",
    "FleetResult",
    "LockboxEvent",
    "PruneEvent",
    "PushBatchEvent",
    "PushDeadLetterEvent",
    "PushDeliveredEvent",
    "PushPartOutcome",
    "RequestEvent",
    "RetentionEvent",
    "SecurityEvents",
    "SyslogSink",
    "UsageLedger",
    "fleet_event",
    "public_keys",
    "published_fleet_keys",
    "published_keys",
    "segment_files",
    "segments_dir",
    "sign_fleet_checkpoint",
    "verify_fleet",
    "verify_log",
]
