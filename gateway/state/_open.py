"""Choosing the state backend from a URL (``[state] url`` in the config)."""

from __future__ import annotations

from pathlib import Path

from gateway.state._postgres import PostgresStore
from gateway.state._sqlite import SqliteStore
from gateway.state._store import StateStore

SQLITE = "sqlite:///"
POSTGRES = ("postgresql://", "postgres://")


def open_store(url: str) -> StateStore:
    """``sqlite:///PATH`` (one process, embedded) or ``postgresql://...``
    (shared by a fleet of replicas)."""
    if url.startswith(SQLITE):
        return SqliteStore(Path(url[len(SQLITE):]))
    if url.startswith(POSTGRES):
        return PostgresStore(url)
    raise ValueError(f"not a state URL: {url.split(':', 1)[0]}:... "
                     "(sqlite:///PATH or postgresql://...)")
