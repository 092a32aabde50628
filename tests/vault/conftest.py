"""Both vault backends, for one suite: the SQLite file and a real PostgreSQL
database (the session's ``postgres`` cluster, tests/conftest.py). A test
gets a :class:`Backend`: open a vault on it, and reach behind the vault's
back with SQL, as someone with access to the file or the database would."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.vault import MasterKeys, PostgresVault, SqliteVault, Vault
from tests.postgres import Cluster

TABLES = ("vault_meta", "vault_master_keys", "vault_secrets")


class Backend:
    def __init__(self, name: str, path: Path, dsn: str | None,
                 cluster: Cluster | None) -> None:
        self.name, self.path, self.dsn, self.cluster = name, path, dsn, cluster

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    def open(self, master: MasterKeys, *,
             clock: Callable[[], datetime] | None = None) -> Vault:
        if self.dsn is not None:
            return PostgresVault(self.dsn, master, clock=clock)
        return SqliteVault(self.path, master, clock=clock)

    def sql(self, query: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``query`` (``?`` placeholders) directly on the storage."""
        if self.dsn is not None:
            with psycopg.connect(self.dsn, autocommit=True) as db:
                cur = db.execute(query.replace("?", "%s"), args or None)
                return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                        for row in cur.fetchall()] if cur.description else []
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            return db.execute(query, args).fetchall()
        finally:
            db.close()

    def snapshot(self) -> object:
        """Everything the backend stores for the vault: the SQLite files'
        names and bytes; the PostgreSQL tables and every row of the vault's."""
        if self.dsn is None:
            files = sorted(p for p in self.path.parent.iterdir() if p.is_file())
            return [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]
        tables = self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                          "ORDER BY 1")
        rows = [self.sql(f"SELECT * FROM {t} ORDER BY 1, 2") for (t,) in tables
                if t in TABLES]
        return tables, rows

    def stored_bytes(self) -> bytes:
        """Every byte the storage keeps on disk: the SQLite files; the
        PostgreSQL database's files and the cluster's write-ahead log."""
        if self.dsn is None or self.cluster is None:
            return b"".join(p.read_bytes() for p in sorted(self.path.parent.iterdir())
                            if p.is_file())
        self.sql("CHECKPOINT")
        (oid,) = self.sql("SELECT oid FROM pg_database WHERE datname = current_database()")[0]
        dirs = [self.cluster.data / "base" / str(oid), self.cluster.data / "pg_wal"]
        return b"".join(p.read_bytes() for d in dirs for p in sorted(d.iterdir())
                        if p.is_file())


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    path = tmp_path / "vault" / "vault.db"
    if request.param == "sqlite":
        return Backend("sqlite", path, None, None)
    cluster: Cluster = request.getfixturevalue("postgres")
    return Backend("postgresql", path, cluster.new_database(), cluster)


@pytest.fixture
def master() -> MasterKeys:
    return MasterKeys.generate()


@pytest.fixture
def vault(backend: Backend, master: MasterKeys) -> Iterator[Vault]:
    with backend.open(master) as v:
        yield v
