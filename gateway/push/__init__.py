"""Pushed data (D1, D5): the intake that fans a shared system's batch out per
tenant, the durable encrypted outbox, and the delivery to each tenant's
receiver over mTLS with retries and back-pressure.

The outbox is a SQLite file for one process, or PostgreSQL for a fleet,
whose replicas claim parts under leases (``open_outbox``).

May import: :mod:`gateway.core`, :mod:`gateway.audit`, :mod:`gateway.metrics`,
:mod:`gateway.problem`, :mod:`gateway.errors`, :mod:`gateway.state` (the
shared database's schema rules).
"""

from __future__ import annotations

from gateway.push._outbox import Outbox
from gateway.push._outbox_backends import PostgresOutbox, SqliteOutbox, open_outbox
from gateway.push._parts import DeadLetter, Part, RetryPolicy
from gateway.push._service import NOTIFICATIONS_MAX, PushService

__all__ = [
    "NOTIFICATIONS_MAX",
    "DeadLetter",
    "Outbox",
    "Part",
    "PostgresOutbox",
    "PushService",
    "RetryPolicy",
    "SqliteOutbox",
    "open_outbox",
]
