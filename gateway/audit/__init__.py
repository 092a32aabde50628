"""The trace of everything (D10, D12): the typed audit event kinds, the audit
sink and the tamper-evident hash-chained log (``docs/audit-format.md``), its
reference verifier, its checkpoint keys and their rotation, pruning by policy,
usage rollups, and the security events for the SOC (file, webhook, RFC 5424
syslog).

May import: :mod:`gateway.errors` and the standard library only; every other
package may import it.
"""

from __future__ import annotations

from gateway.audit._chain import ChainedAuditLog, verify_log
from gateway.audit._events import (
    AdminEvent,
    AuditEvent,
    CmhFanoutEvent,
    PruneEvent,
    PushBatchEvent,
    PushDeadLetterEvent,
    PushDeliveredEvent,
    PushPartOutcome,
    RequestEvent,
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
    "AuditSink",
    "AuditWriteFailed",
    "ChainedAuditLog",
    "CmhFanoutEvent",
    "PruneEvent",
    "PushBatchEvent",
    "PushDeadLetterEvent",
    "PushDeliveredEvent",
    "PushPartOutcome",
    "RequestEvent",
    "SecurityEvents",
    "SyslogSink",
    "UsageLedger",
    "public_keys",
    "published_keys",
    "segment_files",
    "segments_dir",
    "verify_log",
]
