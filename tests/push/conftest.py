"""The outbox on both backends: the SQLite file of one process and a real
PostgreSQL database (the session's cluster, tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.push import Outbox, open_outbox
from tests.postgres import Cluster

KEY = os.urandom(32)


class Clock:
    """A clock the tests move (leases and retries run on it)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    cluster: Cluster = request.getfixturevalue("postgres")
    return cluster.new_database()


@pytest.fixture()
def clock() -> Clock:
    return Clock()


OpenOutbox = Callable[..., Outbox]


@pytest.fixture()
def open_box(outbox_url: str | None, tmp_path: Path, clock: Clock) -> Iterator[OpenOutbox]:
    """Opens outboxes on the same store (another owner: another replica)."""
    opened: list[Outbox] = []

    def make(owner: str = "replica-a") -> Outbox:
        box = open_outbox(outbox_url, tmp_path / "outbox.db", KEY, owner=owner, clock=clock)
        opened.append(box)
        return box

    yield make
    for box in opened:
        box.close()


@pytest.fixture()
def box(open_box: OpenOutbox) -> Outbox:
    return open_box()
