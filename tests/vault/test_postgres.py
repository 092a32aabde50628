"""The vault in PostgreSQL, shared by replicas (D7): two Vault instances on
one database, each with its own connection, stand for two gateway replicas."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.vault import (
    MasterKeys,
    PostgresVault,
    SqliteVault,
    VaultError,
    VaultLocked,
    open_vault,
)
from tests.postgres import Cluster


@pytest.fixture
def dsn(postgres: Cluster) -> str:
    return postgres.new_database()


@pytest.fixture
def master() -> MasterKeys:
    return MasterKeys.generate()


@pytest.fixture
def replicas(dsn: str, master: MasterKeys) -> Iterator[tuple[PostgresVault, PostgresVault]]:
    a, b = PostgresVault(dsn, master), PostgresVault(dsn, master)
    yield a, b
    a.close()
    b.close()


def _race(n: int, work: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run ``work(0..n-1)`` in n threads released at once."""
    start = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            results.append(work(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_two_replicas_see_each_other_s_secrets(
        replicas: tuple[PostgresVault, PostgresVault]) -> None:
    a, b = replicas
    a.put("ores/hes-api", b"from-a", labels={"tenant": "ores"})
    assert b.get("ores/hes-api") == b"from-a"
    assert b.put("ores/hes-api", b"from-b").version == 2
    assert (a.get("ores/hes-api"), a.get("ores/hes-api", 1)) == (b"from-b", b"from-a")
    assert a.delete_versions_before("ores/hes-api", 2) == 1
    assert [m.version for m in b.versions("ores/hes-api")] == [2]
    assert [m.id for m in b.list()] == ["ores/hes-api"]


def test_concurrent_puts_on_two_replicas_get_distinct_versions(
        replicas: tuple[PostgresVault, PostgresVault]) -> None:
    per_thread, threads = 10, 8

    def work(i: int) -> list[tuple[int, bytes]]:
        vault = replicas[i % 2]
        out = []
        for n in range(per_thread):
            value = f"t{i}-{n}".encode()
            out.append((vault.put("ores/hes-api", value).version, value))
        return out

    results, errors = _race(threads, work)
    assert errors == []
    stored = [pair for r in results for pair in r]
    versions = sorted(v for v, _ in stored)
    assert versions == list(range(1, threads * per_thread + 1))  # none repeats, none skipped
    a, b = replicas
    for version, value in stored:  # each number holds what its put stored
        assert a.get("ores/hes-api", version) == value == b.get("ores/hes-api", version)


def test_a_wrong_master_key_is_refused_while_a_replica_runs(
        replicas: tuple[PostgresVault, PostgresVault], dsn: str) -> None:
    a, _ = replicas
    a.put("a", b"value")
    with pytest.raises(VaultLocked, match="v1 is wrong"):
        PostgresVault(dsn, MasterKeys.generate())
    with pytest.raises(VaultLocked, match="v1 needed"):
        PostgresVault(dsn, MasterKeys.generate(version=2))
    assert a.get("a") == b"value"


def test_replicas_starting_at_once_create_the_schema_once(dsn: str,
                                                         master: MasterKeys) -> None:
    opened, errors = _race(6, lambda i: PostgresVault(dsn, master))
    assert errors == []
    opened[0].put("a", b"x")
    assert all(v.get("a") == b"x" for v in opened)
    for v in opened:
        v.close()


def test_a_rekey_on_one_replica_is_read_by_the_other(dsn: str, master: MasterKeys) -> None:
    both = master.with_new_version()  # the key file the operator hands out first
    with PostgresVault(dsn, master) as a, PostgresVault(dsn, both) as b, \
            PostgresVault(dsn, master) as stale:
        a.put("ores/hes-api", b"pw-1")
        assert a.rekey(both) == 1
        assert b.get("ores/hes-api") == b"pw-1"
        assert b.put("ores/hes-api", b"pw-2").version == 2
        # A replica still on the old key file refuses, rather than write
        # under v1 (about to leave the key file) or read garbage.
        with pytest.raises(VaultLocked, match="v2"):
            stale.get("ores/hes-api")
        with pytest.raises(VaultLocked, match="v2"):
            stale.put("ores/hes-api", b"pw-3")
    with PostgresVault(dsn, MasterKeys({2: both.keys[2]})) as only_new:
        assert only_new.get("ores/hes-api", 1) == b"pw-1"


ROWS = 300  # enough that the two final transactions overlap


def test_two_rekeys_to_different_keys_for_one_version_do_not_both_win(
        dsn: str, master: MasterKeys) -> None:
    with PostgresVault(dsn, master) as seed:
        for n in range(ROWS):
            seed.put(f"s{n}", b"x")
    news = [master.with_new_version(), master.with_new_version()]  # two different v2 keys
    vaults = [PostgresVault(dsn, master), PostgresVault(dsn, master)]
    try:
        results, errors = _race(2, lambda i: (i, vaults[i].rekey(news[i])))
    finally:
        for v in vaults:
            v.close()
    assert len(results) == 1 and len(errors) == 1
    assert isinstance(errors[0], VaultLocked)
    ((winner, count),) = results
    assert count == ROWS
    with PostgresVault(dsn, MasterKeys({2: news[winner].keys[2]})) as v:
        assert all(v.get(f"s{n}") == b"x" for n in range(ROWS))
    with pytest.raises(VaultLocked, match="v2 is wrong"):
        PostgresVault(dsn, MasterKeys({2: news[1 - winner].keys[2]}))


def test_open_vault_picks_the_backend_from_the_state_url(dsn: str, master: MasterKeys,
                                                         tmp_path: Path) -> None:
    for url in (dsn, "postgres://" + dsn.removeprefix("postgresql://")):
        with open_vault(url, tmp_path / "unused.db", master) as v:
            assert isinstance(v, PostgresVault)
    assert not (tmp_path / "unused.db").exists()
    for url in (None, f"sqlite:///{tmp_path / 'state.db'}"):
        with open_vault(url, tmp_path / "vault.db", master) as v:
            assert isinstance(v, SqliteVault) and v.path == tmp_path / "vault.db"


def test_an_unreachable_database_names_no_password(tmp_path: Path, master: MasterKeys) -> None:
    url = f"postgresql://gw:hunter2-secret@/nowhere?host={tmp_path}&connect_timeout=2"
    with pytest.raises(VaultError, match="'nowhere' cannot be reached") as exc:
        open_vault(url, tmp_path / "vault.db", master)
    assert "hunter2" not in str(exc.value) and exc.value.__cause__ is None


def test_puts_racing_a_rekey_all_end_up_under_the_new_version(dsn: str,
                                                              master: MasterKeys) -> None:
    """A replica still on the old key file keeps putting while another
    rekeys: each of its puts lands before the rekey (and is re-wrapped) or is
    refused after it; none is left under the version about to be dropped."""
    both = master.with_new_version()
    with PostgresVault(dsn, master) as seed:
        for n in range(ROWS):
            seed.put(f"s{n}", b"x")
    rekeyer, stale = PostgresVault(dsn, master), PostgresVault(dsn, master)
    done = threading.Event()
    outcome = {"stored": 0, "refused": 0}

    def work(i: int) -> None:
        if i == 0:
            try:
                rekeyer.rekey(both)
            finally:
                done.set()
            return
        for n in range(10_000):  # bounded
            try:
                stale.put(f"w{n % 50}", b"w")
                outcome["stored"] += 1
            except VaultLocked:
                outcome["refused"] += 1
                return
            if done.is_set():
                return

    try:
        _, errors = _race(2, work)
    finally:
        rekeyer.close()
        stale.close()
    assert errors == []
    assert outcome["stored"] > 0
    with PostgresVault(dsn, MasterKeys({2: both.keys[2]})) as only_new:  # v1 dropped
        assert all(only_new.get(m.id) in (b"x", b"w") for m in only_new.list())
