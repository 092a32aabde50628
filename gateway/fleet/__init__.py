"""This process's part in a fleet of gateway replicas sharing PostgreSQL
(README, "The fleet"; docs/architecture.md): holding or waiting for the
control lock, the heartbeat and each tenant's share of its quota, following
the shared state as soon as it is announced, shipping the audit chain and
signing fleet checkpoints, publishing and following the relation snapshot.

A process on its own (SQLite state) has no fleet member: it leads alone.

May import: every package below the server (:mod:`gateway.pki`,
:mod:`gateway.dataplane`, :mod:`gateway.audit`, :mod:`gateway.state`,
:mod:`gateway.files`, :mod:`gateway.config`, :mod:`gateway.metrics`,
:mod:`gateway.core`, :mod:`gateway.errors`).
"""

from __future__ import annotations

from gateway.fleet._member import FleetHost, FleetMember, relations_digest

__all__ = ["FleetHost", "FleetMember", "relations_digest"]
