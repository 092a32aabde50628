"""Backup and restore of the embedded SQLite state (``gateway state
backup|restore``): a consistent owner-only copy of a live file, and a
restore that replaces a state only with a checked state file, never over an
existing one unless told, never under a gateway that has it open."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.state import (
    CertificateRecord,
    SqliteStore,
    StateFileRefused,
    backup_state,
    check_state_file,
    restore_state,
)
from gateway.state._cli import state_file
from gateway.state._sqlite import SCHEMA_VERSION

T0 = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)


def cert(serial: str) -> CertificateRecord:
    return CertificateRecord(serial, "ores", "service", "api", "ca1", T0, T0 + timedelta(days=30),
                             "ab" * 32, "-----BEGIN CERTIFICATE-----", T0, "active")


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[SqliteStore]:
    """A state file held open as a gateway holds it (WAL, one connection)."""
    store = SqliteStore(tmp_path / "live" / "state.db")
    store.add_certificate(cert("01"))
    yield store
    store.close()


@pytest.fixture()
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def serials(path: Path) -> list[str]:
    store = SqliteStore(path)
    try:
        return sorted(c.serial for c in store.certificates())
    finally:
        store.close()


def test_a_backup_of_a_live_state_is_owner_only_whole_and_single_file(
        live: SqliteStore, tmp_path: Path, umask_zero: None) -> None:
    out = tmp_path / "backups" / "state-backup.db"
    backup_state(live.path, out)
    live.add_certificate(cert("02"))  # after the backup: not in it
    # SECURITY: the copy holds the CA and signing keys; umask 0 changes nothing.
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not out.with_name(out.name + "-wal").exists()
    assert out.read_bytes()[18:20] == b"\x01\x01"  # rollback journal, not WAL: one file
    assert check_state_file(out) == SCHEMA_VERSION
    assert serials(out) == ["01"]
    assert sorted(c.serial for c in live.certificates()) == ["01", "02"]  # still writing
    # Nothing but the backup was left in its directory.
    assert sorted(p.name for p in out.parent.iterdir()) == ["state-backup.db"]


def test_a_backup_replaces_a_world_readable_file_with_an_owner_only_one(
        live: SqliteStore, tmp_path: Path, umask_zero: None) -> None:
    out = tmp_path / "state-backup.db"
    out.write_bytes(b"old")
    out.chmod(0o644)
    backup_state(live.path, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert serials(out) == ["01"]


def test_a_backup_needs_a_state_file_and_never_overwrites_it(tmp_path: Path,
                                                             live: SqliteStore) -> None:
    with pytest.raises(StateFileRefused, match="no state file"):
        backup_state(tmp_path / "nothing.db", tmp_path / "out.db")
    with pytest.raises(StateFileRefused, match="the state file itself"):
        backup_state(live.path, live.path)
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello\n" * 100)
    with pytest.raises(StateFileRefused, match="cannot copy"):
        backup_state(not_sqlite, tmp_path / "out.db")
    vault_like = tmp_path / "vault.db"
    with sqlite3.connect(vault_like) as db:
        db.execute("CREATE TABLE secrets (id TEXT PRIMARY KEY)")
    db.close()
    with pytest.raises(StateFileRefused, match="not a gateway state database"):
        backup_state(vault_like, tmp_path / "out.db")
    assert not (tmp_path / "out.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert sorted(c.serial for c in live.certificates()) == ["01"]


def a_backup(live: SqliteStore, tmp_path: Path) -> Path:
    out = tmp_path / "state-backup.db"
    backup_state(live.path, out)
    return out


def test_restore_into_a_fresh_directory(live: SqliteStore, tmp_path: Path,
                                        umask_zero: None) -> None:
    backup = a_backup(live, tmp_path)
    target = tmp_path / "fresh" / "state.db"
    assert restore_state(backup, target) == SCHEMA_VERSION
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert serials(target) == ["01"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.db"]


def test_restore_never_replaces_an_existing_state_unless_forced(live: SqliteStore,
                                                                 tmp_path: Path) -> None:
    backup = a_backup(live, tmp_path)
    target = tmp_path / "other" / "state.db"
    other = SqliteStore(target)
    other.add_certificate(cert("99"))
    other.close()
    with pytest.raises(StateFileRefused, match="--force"):
        restore_state(backup, target)
    assert serials(target) == ["99"]
    restore_state(backup, target, force=True)
    assert serials(target) == ["01"]


def test_restore_refuses_a_state_a_gateway_has_open(live: SqliteStore, tmp_path: Path) -> None:
    backup = a_backup(live, tmp_path)
    # A gateway in another process holds the state, as `gateway serve` does.
    target = tmp_path / "held" / "state.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from gateway.state import SqliteStore
            store = SqliteStore(Path({str(target)!r}))
            store.certificates()
            print("open", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(StateFileRefused, match="in use"):
            restore_state(backup, target, force=True)
        assert serials(target) == []
    finally:
        holder.communicate("", timeout=30)
    restore_state(backup, target, force=True)  # once it is closed
    assert serials(target) == ["01"]


def test_restore_checks_the_file_is_a_state_of_a_readable_schema(live: SqliteStore,
                                                                  tmp_path: Path) -> None:
    target = tmp_path / "target" / "state.db"
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello\n" * 100)
    other_db = tmp_path / "other.db"
    with sqlite3.connect(other_db) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    db.close()
    newer = a_backup(live, tmp_path)
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                   (str(SCHEMA_VERSION + 1),))
    db.close()
    for bad, why in [(not_sqlite, "not a gateway state database"),
                     (other_db, "not a gateway state database"),
                     (newer, f"reads versions 1 to {SCHEMA_VERSION}"),
                     (tmp_path / "missing.db", "no such file")]:
        with pytest.raises(StateFileRefused, match=why):
            restore_state(bad, target)
        assert not target.exists()


def test_an_older_schema_is_restored_and_migrated_on_open(live: SqliteStore,
                                                          tmp_path: Path) -> None:
    older = a_backup(live, tmp_path)
    with sqlite3.connect(older) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    target = tmp_path / "target" / "state.db"
    assert restore_state(older, target) == 1
    store = SqliteStore(target)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.lockbox_entries() == []  # 5: the lockbox table is there (D7)
    finally:
        store.close()


def test_the_state_file_is_found_as_serve_finds_it(tmp_path: Path) -> None:
    assert state_file(None, tmp_path) == tmp_path / "state.db"
    assert state_file(f"sqlite:///{tmp_path / 's.db'}", tmp_path) == tmp_path / "s.db"
    with pytest.raises(StateFileRefused, match="pg_dump"):
        state_file("postgresql://gw@db/gateway", tmp_path)


def test_the_cli_verbs_exit_0_and_1(live: SqliteStore, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.db"
    assert main(["state", "backup", "--db", str(live.path), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"to {out}" in said and "CA and signing keys" in said
    target = tmp_path / "t" / "state.db"
    assert main(["state", "restore", "--from", str(out), "--db", str(target)]) == 0
    assert main(["state", "restore", "--from", str(out), "--db", str(target)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["state", "restore", "--from", str(out), "--db", str(target), "--force"]) == 0
    assert main(["state", "backup", "--db", str(tmp_path / "none.db"), "--out",
                 str(tmp_path / "x.db")]) == 1
