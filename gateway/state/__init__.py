"""Durable state behind a narrow interface (DESIGN.md §6).

The embedded default is one SQLite file (WAL) under the data directory
(:class:`SqliteStore`); replicas of a fleet share PostgreSQL
(:class:`PostgresStore`); ``open_store(url)`` picks one from ``[state] url``.
Replicas also share, in PostgreSQL, a heartbeat table (:class:`Heartbeats`),
the control plane's advisory lock (:class:`LeaderLock`) and change
notifications (:class:`ChangeListener`).
Both pass one conformance suite (tests/state). The SQLite file is backed
up online and restored by ``gateway state backup|restore``
(:func:`backup_state`, :func:`restore_state`, :func:`add_backup_parsers`).
Nothing here holds proxied payloads. The request path never touches the store: what
a request needs (revoked serials, disabled principals) is kept in memory and
refreshed on every change.

May import: the standard library, psycopg and :mod:`gateway.errors` only;
every package above the foundation may import it.
"""

from gateway.state._backup import (
    StateFileRefused,
    backup_state,
    check_state_file,
    restore_state,
)
from gateway.state._cli import add_backup_parsers
from gateway.state._fleet import (
    CONTROL_LOCK,
    AuditTables,
    ChangeListener,
    Heartbeats,
    LeaderLock,
    RelationPointer,
    RelationPublication,
    Replica,
)
from gateway.state._open import open_store
from gateway.state._postgres import PostgresStore, ensure_schema
from gateway.state._records import (
    BreakGlassCase,
    CaRecord,
    CertificateRecord,
    Consultation,
    LockboxEntry,
    NrnApproval,
    PendingAction,
    PrincipalKey,
    PrincipalState,
    SigningKeyRecord,
    record_json,
)
from gateway.state._roles import DATA_PLANE_PRIVILEGES, data_plane_grants
from gateway.state._sqlite import SqliteStore
from gateway.state._store import StateStore

__all__ = [
    "CONTROL_LOCK",
    "DATA_PLANE_PRIVILEGES",
    "AuditTables",
    "BreakGlassCase",
    "CaRecord",
    "CertificateRecord",
    "ChangeListener",
    "Consultation",
    "Heartbeats",
    "LeaderLock",
    "LockboxEntry",
    "NrnApproval",
    "PendingAction",
    "PostgresStore",
    "PrincipalKey",
    "PrincipalState",
    "RelationPointer",
    "RelationPublication",
    "Replica",
    "SigningKeyRecord",
    "SqliteStore",
    "StateFileRefused",
    "StateStore",
    "add_backup_parsers",
    "backup_state",
    "check_state_file",
    "data_plane_grants",
    "ensure_schema",
    "open_store",
    "record_json",
    "restore_state",
]
