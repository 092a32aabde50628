"""Pushed data (D1, D5): the intake that fans a shared system's batch out per
tenant, the durable encrypted outbox, and the delivery to each tenant's
receiver over mTLS with retries and back-pressure.

May import: :mod:`gateway.core`, :mod:`gateway.audit`, :mod:`gateway.metrics`,
:mod:`gateway.problem`, :mod:`gateway.errors`.
"""

from __future__ import annotations

from gateway.push._outbox import Outbox
from gateway.push._service import PushService

__all__ = [
    "Outbox",
    "PushService",
]
