"""Retention over the real stores: the SQLite files of one process and a real
PostgreSQL database (the session's cluster, tests/conftest.py), a real
hash-chained audit log, and a clock the tests move."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditKeys, ChainedAuditLog
from gateway.config import RetentionConfig
from gateway.metrics import GatewayMetrics
from gateway.push import Outbox, open_outbox
from gateway.retention import Retention
from gateway.state import PrincipalKey, StateStore, open_store
from tests.postgres import Cluster

KEY = os.urandom(32)
T0 = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, days: float, seconds: float = 0) -> None:
        """Move to T0 + ``days`` + ``seconds``."""
        self.now = T0 + timedelta(days=days, seconds=seconds)


@dataclass
class World:
    """One gateway's stores with a retention duty over them."""

    store: StateStore
    outbox: Outbox
    audit: ChainedAuditLog
    metrics: GatewayMetrics
    clock: Clock
    declared: set[PrincipalKey]
    make: Callable[..., Retention]

    def events(self) -> list[dict[str, Any]]:
        lines = (json.loads(line) for line in self.audit.path.read_text().splitlines() if line)
        return [e for e in lines if e.get("event") == "retention"]

    def deleted(self, category: str) -> float:
        return float(self.metrics.retention_deleted.labels(category)._value.get())


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "sqlite":
        return None
    cluster: Cluster = request.getfixturevalue("postgres")
    return cluster.new_database()


@pytest.fixture()
def world(state_url: str | None, tmp_path: Path) -> Iterator[World]:
    clock = Clock()
    store = open_store(state_url or f"sqlite:///{tmp_path / 'state.db'}")
    outbox = open_outbox(state_url, tmp_path / "outbox.db", KEY, owner="control-0",
                         clock=clock)
    keys = AuditKeys(tmp_path / "audit-key")
    audit = ChainedAuditLog(tmp_path / "audit.jsonl", keys.key, keys.kid)
    metrics = GatewayMetrics()
    declared: set[PrincipalKey] = set()

    def make(**config: float) -> Retention:
        return Retention(store=store, outbox=outbox, declared=lambda key: key in declared,
                         config=RetentionConfig(**config), audit=audit, metrics=metrics,
                         clock=clock)

    yield World(store, outbox, audit, metrics, clock, declared, make)
    audit.close()
    outbox.close()
    store.close()
