"""Audit trail of every decision (D10): who, what, decision, ids; never a
payload, never a secret.

The sink is :class:`gateway.audit._chain.ChainedAuditLog` (hash-chained, signed
checkpoints). It records the typed kinds of :mod:`gateway.audit._events`
only. Writing the event is part of the request: if it fails, the request
fails (fail closed).
"""

from __future__ import annotations

import asyncio
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

    def record_soon(self, event: AuditEvent) -> asyncio.Future[None]:
        """Write one event with the others of this event-loop iteration (one
        write): the future is done once it is written, or fails with
        :class:`AuditWriteFailed`; await it before answering."""


class AuditWriteFailed(GatewayFailed):
    """The audit store could not be written; the request must not proceed."""
