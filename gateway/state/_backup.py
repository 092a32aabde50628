"""Backup and restore of the embedded state (one SQLite file).

The file holds the CA and signing keys: a backup is as secret as the state
itself, so it is created owner-only (0600) before its first byte.

- :func:`backup_state` copies a live file with SQLite's online backup API: a
  consistent snapshot while a gateway keeps writing (WAL readers do not
  block writers), written to a 0600 temporary file beside ``out``, flushed to
  disk and renamed over ``out``. The copy is a single self-contained file (no
  ``-wal`` beside it).
- :func:`check_state_file` says whether a file is a gateway state database
  this release can open: an SQLite file that passes ``integrity_check``, with
  the state's tables and a schema version from 1 (older ones are migrated on
  open) to :data:`SCHEMA_VERSION` (newer ones come from a newer release).
- :func:`restore_state` replaces a state file with a checked backup,
  atomically (a rename): never over an existing file unless ``force``, and
  never under a gateway that has the file open (detected by SQLite's own
  locks: an open WAL connection keeps a shared lock that an exclusive
  transaction cannot pass).

PostgreSQL state is backed up with ``pg_dump``; nothing here speaks to it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

from gateway.errors import GatewayError
from gateway.state._sqlite import SCHEMA_VERSION

# What every state file has, whatever its schema version.
REQUIRED_TABLES = frozenset({"meta", "certificates", "principal_states", "cas",
                             "signing_keys", "breakglass"})


class StateFileRefused(GatewayError):
    """A backup or restore that is not done; the message says why."""


def _private_temp(beside: Path) -> Path:
    # SECURITY: mkstemp creates the file 0600 whatever the umask: the copy of
    # the CA and signing keys is never readable by others, not even briefly.
    fd, name = tempfile.mkstemp(dir=beside.parent, prefix=f".{beside.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(src: sqlite3.Connection, dst_path: Path) -> None:
    """``src`` into the (empty) file ``dst_path`` in one step of the online
    backup API, then made a single self-contained file."""
    dst = sqlite3.connect(dst_path, isolation_level=None)
    try:
        src.backup(dst)
        # The copy inherits WAL mode from a live source; a backup is one file.
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
    _fsync(dst_path)


def _replace(tmp: Path, target: Path) -> None:
    os.replace(tmp, target)
    _fsync(target.parent)  # the rename itself survives a crash


def backup_state(src: Path, out: Path) -> int:
    """Copy the state file ``src`` (live or not) to ``out`` (mode 0600);
    returns the size written."""
    if not src.is_file():
        raise StateFileRefused(f"no state file at {src}")
    if out.exists() and out.resolve() == src.resolve():
        raise StateFileRefused(f"{out} is the state file itself")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Read-only: the backup never writes to (or migrates) the live file.
    source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True)
    tmp = _private_temp(out)
    try:
        try:
            _copy(source, tmp)
        except sqlite3.Error as exc:
            raise StateFileRefused(f"{src}: cannot copy it: {exc}") from exc
        finally:
            source.close()
        check_state_file(tmp)
        _replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out.stat().st_size


def check_state_file(path: Path) -> int:
    """The schema version of the gateway state database ``path``; refuses
    anything else (not SQLite, damaged, not the state, a newer schema)."""
    if not path.is_file():
        raise StateFileRefused(f"no such file: {path}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StateFileRefused(f"{path}: cannot open: {exc}") from exc
    try:
        try:
            if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise StateFileRefused(f"{path}: the database is damaged (integrity_check)")
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = REQUIRED_TABLES - tables
            if missing:
                raise StateFileRefused(f"{path}: not a gateway state database (no table "
                                       f"{', '.join(sorted(missing))})")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:  # "file is not a database", ...
            raise StateFileRefused(f"{path}: not a gateway state database: {exc}") from exc
    finally:
        db.close()
    try:
        version = int(row[0]) if row else 0
    except (TypeError, ValueError):
        version = 0
    if not 1 <= version <= SCHEMA_VERSION:
        raise StateFileRefused(f"{path}: state schema version {row[0] if row else None}; "
                               f"this release reads versions 1 to {SCHEMA_VERSION}")
    return version


def _refuse_if_held(target: Path) -> None:
    """Refuses when a process has ``target`` open as a database (a running
    gateway): its WAL connection holds a shared lock, so an exclusive
    transaction fails at once. Our own opening also folds any ``-wal`` left
    by a crash into the old file and removes it, so it cannot be replayed
    onto the restored one."""
    db = sqlite3.connect(target, isolation_level=None, timeout=0)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorname not in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            raise StateFileRefused(f"{target}: cannot open: {exc}") from exc
        raise StateFileRefused(
            f"{target} is in use (a gateway has it open): stop it first") from exc
    except sqlite3.DatabaseError:
        return  # not a database at all (a damaged file): nothing holds it as one
    finally:
        db.close()


def restore_state(backup: Path, target: Path, *, force: bool = False) -> int:
    """Replace the state file ``target`` with the checked ``backup``; returns
    the backup's schema version."""
    version = check_state_file(backup)
    if backup.resolve() == target.resolve():
        raise StateFileRefused(f"{backup} is the state file itself")
    if target.exists():
        if not force:
            raise StateFileRefused(f"{target} exists: pass --force to replace it "
                                   "(its certificates, revocations and keys are lost)")
        _refuse_if_held(target)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    source = sqlite3.connect(f"{backup.resolve().as_uri()}?mode=ro", uri=True)
    tmp = _private_temp(target)
    try:
        try:
            _copy(source, tmp)
        finally:
            source.close()
        for suffix in ("-wal", "-shm", "-journal"):  # the old file's, never the new one's
            with contextlib.suppress(FileNotFoundError):
                target.with_name(target.name + suffix).unlink()
        _replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return version
