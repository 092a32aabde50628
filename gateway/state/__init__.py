"""Durable state behind a narrow interface (DESIGN.md §6).

The embedded default is one SQLite file (WAL) under the data directory; a
fleet can later share PostgreSQL by implementing :class:`StateStore`. Nothing
here holds proxied payloads. The request path never touches the store: what
a request needs (revoked serials, disabled principals) is kept in memory and
refreshed on every change.
"""

from gateway.state.records import (
    BreakGlassCase,
    CaRecord,
    CertificateRecord,
    Consultation,
    PendingAction,
    PrincipalKey,
    PrincipalState,
    SigningKeyRecord,
)
from gateway.state.sqlite import SqliteStore
from gateway.state.store import StateStore

__all__ = [
    "BreakGlassCase",
    "CaRecord",
    "CertificateRecord",
    "Consultation",
    "PendingAction",
    "PrincipalKey",
    "PrincipalState",
    "SigningKeyRecord",
    "SqliteStore",
    "StateStore",
]
