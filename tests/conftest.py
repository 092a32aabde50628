"""Fixtures shared across the suite: the audit log's keys (tests/audit) and
one throwaway PostgreSQL server per session (tests/postgres.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import _chain as ac
from gateway.demo._ports import SLICE_ENV
from tests.postgres import Cluster

# Under pytest-xdist each worker picks spare ports (gateway.demo.spare_port)
# from a slice of its own: two workers never hand a replica the same port.
if (_worker := os.environ.get("PYTEST_XDIST_WORKER", "")).startswith("gw"):
    os.environ[SLICE_ENV] = f"{_worker[2:]}/{os.environ['PYTEST_XDIST_WORKER_COUNT']}"

# Stopped at the end of the session, outside any test: a session fixture's
# teardown runs within the last test's timeout, and removing a cluster's
# files on a busy disk has taken longer than that.
_CLUSTERS: list[Cluster] = []


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A PostgreSQL server of the machine's own binaries, started once, in a
    temporary directory; a test takes a fresh database with new_database()."""
    cluster = Cluster().start()
    _CLUSTERS.append(cluster)
    yield cluster


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    while _CLUSTERS:
        _CLUSTERS.pop().stop()


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def kid(key: Ed25519PrivateKey) -> str:
    return ac.audit_kid(key.public_key())


@pytest.fixture(scope="module")
def keys(key: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    return ac.public_key_document(key, kid)
