"""Audit trail of every decision (D10): who, what, decision, ids; never a
payload, never a secret.

The sink is :class:`gateway.audit._chain.ChainedAuditLog` (hash-chained, signed
checkpoints). It records the typed kinds of :mod:`gateway.audit._events`
only. Writing the event is part of the request: if it fails, the request
fails (fail closed).
"""

from __future__ import annotations

from typing import Protocol

from gateway.audit._events import AuditEvent
from gateway.errors import GatewayFailed


class AuditSink(Protocol):
    """Where audit events go: written before the answer is sent (fail closed)."""

    @property
    def writable(self) -> bool:
        """False once the sink is closed or broken: callers refuse up front."""

    def record(self, event: AuditEvent) -> None:
        """Write one event durably, or raise :class:`AuditWriteFailed`."""


class AuditWriteFailed(GatewayFailed):
    """The audit store could not be written; the request must not proceed."""
