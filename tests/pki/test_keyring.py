"""The gateway's signing keys (gateway/pki/_signing_keys.py): which key signs
an upstream assertion at a given time. A successor is published before it
signs, so that every upstream knows it first; until its time the present
key signs. The keys live in a real SQLite state file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.pki._signing_keys import KeyRing, _new_record
from gateway.state import StateStore, open_store

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    yield opened
    opened.close()


def _ring(store: StateStore, now: datetime = T0) -> KeyRing:
    return KeyRing(store, token_lifetime=timedelta(minutes=5), clock=lambda: now)


def test_a_first_ring_makes_its_key_and_signs_with_it(store: StateStore) -> None:
    ring = _ring(store)
    assert [k.kid for k in ring.published()] == [ring.current().kid]


def test_a_successor_signs_from_its_activation_on_not_a_moment_before(
        store: StateStore) -> None:
    ring = _ring(store)
    first = ring.current()
    successor = ring.rotate(T0)
    assert successor.activate_at == T0 + 60 * S
    # Published at once, signing only from its time (the upstreams learn it first).
    assert successor.kid in {k.kid for k in ring.published(T0)}
    assert ring.current(T0 + 59 * S).kid == first.kid
    assert ring.current(T0 + 60 * S).kid == successor.kid  # at its time exactly
    assert ring.current(T0 + 3600 * S).kid == successor.kid


def test_the_newest_active_key_signs_whatever_order_the_store_gives(
        store: StateStore) -> None:
    late = _new_record(T0, T0 + 10 * S)
    early = _new_record(T0, T0 - 10 * S)
    earliest = _new_record(T0, T0 - 20 * S)
    for rec in (late, earliest, early):
        store.add_signing_key(rec)
    ring = _ring(store)
    assert ring.current(T0).kid == early.kid  # not the later one, not yet
    assert ring.current(T0 + 10 * S).kid == late.kid
    assert ring.current(T0 - 15 * S).kid == earliest.kid


def test_before_any_key_is_active_the_first_the_store_holds_signs(store: StateStore) -> None:
    first = _new_record(T0, T0 + 10 * S)
    second = _new_record(T0, T0 + 20 * S)
    for rec in (second, first):
        store.add_signing_key(rec)
    ring = _ring(store)
    # The store lists by activation: the earliest is the one kept first.
    assert ring.current(T0).kid == first.kid


def test_keys_that_activate_together_sign_in_the_stores_order(store: StateStore) -> None:
    a, b = _new_record(T0, T0), _new_record(T0, T0)
    for rec in (a, b):
        store.add_signing_key(rec)
    ring = _ring(store)
    expected = min((a, b), key=lambda r: r.kid).kid  # ORDER BY activate_at, kid
    assert ring.current(T0).kid == expected
