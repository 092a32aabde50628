"""gateway/vault: secrets encrypted at rest, bound to id and version, rekeyed
online (D7: secure password vaults). Every test that is not about the SQLite
file itself runs on both backends (tests/vault/conftest.py): the SQLite file
and a real PostgreSQL database."""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.vault import (
    MasterKeys,
    SecretNotFound,
    SqliteVault,
    Vault,
    VaultError,
    VaultLocked,
    VaultTampered,
)
from tests.vault.conftest import Backend


def _column(backend: Backend, column: str, secret_id: str, version: int) -> bytes:
    rows = backend.sql(f"SELECT {column} FROM vault_secrets "
                       "WHERE secret_id = ? AND version = ?", (secret_id, version))
    value = rows[0][0]
    assert isinstance(value, bytes)
    return value


def _set(backend: Backend, column: str, secret_id: str, version: int, value: bytes) -> None:
    """Change a row behind the vault's back, as an attacker with access to
    the file or the database would."""
    backend.sql(f"UPDATE vault_secrets SET {column} = ? "
                "WHERE secret_id = ? AND version = ?", (value, secret_id, version))


# -- round trips ----------------------------------------------------------------
def test_put_get_versions_list_round_trip(vault: Vault) -> None:
    first = vault.put("ores/hes-api", b"pw-1", kind="upstream-credential",
                      labels={"tenant": "ores"})
    second = vault.put("ores/hes-api", b"pw-2", kind="upstream-credential",
                       labels={"tenant": "ores", "rotated": "yes"})
    vault.put("break-glass/root", b"\x00\xffbinary")
    assert (first.version, second.version) == (1, 2)
    assert vault.get("ores/hes-api") == b"pw-2"
    assert vault.get("ores/hes-api", 1) == b"pw-1"
    assert vault.get("break-glass/root") == b"\x00\xffbinary"
    meta = vault.meta("ores/hes-api")
    assert meta == second
    assert (meta.kind, dict(meta.labels)) == ("upstream-credential",
                                              {"tenant": "ores", "rotated": "yes"})
    assert meta.created.tzinfo is not None
    assert [m.version for m in vault.versions("ores/hes-api")] == [1, 2]
    assert [(m.id, m.version, m.kind) for m in vault.list()] == [
        ("break-glass/root", 1, "generic"), ("ores/hes-api", 2, "upstream-credential")]


def test_values_survive_reopen(backend: Backend, master: MasterKeys) -> None:
    with backend.open(master) as v:
        v.put("a", b"one")
    with backend.open(master) as v:
        assert v.get("a") == b"one"
        assert v.put("a", b"two").version == 2


def test_unknown_ids_and_versions(vault: Vault) -> None:
    vault.put("a", b"x")
    with pytest.raises(SecretNotFound):
        vault.get("b")
    with pytest.raises(SecretNotFound):
        vault.get("a", 2)
    with pytest.raises(SecretNotFound):
        vault.meta("b")
    with pytest.raises(SecretNotFound):
        vault.versions("b")


@pytest.mark.parametrize("bad", ["", "A", "-x", ".x", "a b", "a\x00", "a" * 129, "é"])
def test_invalid_secret_ids_are_refused(vault: Vault, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid secret id"):
        vault.put(bad, b"x")
    with pytest.raises(ValueError):
        vault.get(bad)


def test_valid_secret_ids(vault: Vault) -> None:
    for good in ("a" * 128, "0", "ores/hes-api.v2_x", "x-y/z"):
        vault.put(good, b"v")
        assert vault.get(good) == b"v"


def test_files_are_owner_only(tmp_path: Path, master: MasterKeys) -> None:
    db_path = tmp_path / "vault.db"
    with SqliteVault(db_path, master) as vault:
        vault.put("a", b"x")
        for name in (db_path.name, db_path.name + "-wal"):
            assert (db_path.parent / name).stat().st_mode & 0o777 == 0o600


# -- nothing plaintext ---------------------------------------------------------------
def test_canary_never_in_files_logs_or_reprs(backend: Backend, master: MasterKeys,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    canary = b"CANARY-" + secrets.token_hex(16).encode()
    raw_key = master.keys[1]
    forbidden = [canary, raw_key, base64.b64encode(raw_key)]
    with backend.open(master) as v:
        v.put("ores/hes-api", canary, labels={"tenant": "ores"})
        v.put("ores/hes-api", canary + b"-2")
        assert v.get("ores/hes-api", 1) == canary
        before_checkpoint = backend.stored_bytes()  # SQLite: the -wal too
        if not backend.postgres:
            assert (backend.path.parent / (backend.path.name + "-wal")).stat().st_size > 0
        newer = master.with_new_version()
        v.rekey(newer)
        forbidden += [newer.keys[2], base64.b64encode(newer.keys[2])]
        reprs = repr(v) + repr(master) + repr(newer)
        with pytest.raises(SecretNotFound) as exc:
            v.get("ores/hes-api", 9)
        reprs += str(exc.value)
    after_close = backend.stored_bytes()
    assert b"ores/hes-api" in after_close  # the scan does see what is stored
    logged = "\n".join(r.getMessage() for r in caplog.records).encode()
    assert caplog.records, "expected the vault to log its operations"
    for secret in forbidden:
        for haystack in (before_checkpoint, after_close, logged, reprs.encode()):
            assert secret not in haystack
            assert secret.hex().encode() not in haystack


# -- tampering ---------------------------------------------------------------------
@pytest.mark.parametrize("column", ["ciphertext", "wrapped_key"])
def test_swapping_between_ids_is_detected(backend: Backend, master: MasterKeys,
                                          column: str) -> None:
    with backend.open(master) as v:
        v.put("tenant-a/api", b"secret-a")
        v.put("tenant-b/api", b"secret-b")
    a, b = _column(backend, column, "tenant-a/api", 1), _column(backend, column, "tenant-b/api", 1)
    _set(backend, column, "tenant-a/api", 1, b)
    _set(backend, column, "tenant-b/api", 1, a)
    with backend.open(master) as v:
        with pytest.raises(VaultTampered, match=r"'tenant-a/api' version 1"):
            v.get("tenant-a/api")
        with pytest.raises(VaultTampered, match=r"'tenant-b/api' version 1"):
            v.get("tenant-b/api")


def test_swapping_both_columns_between_ids_is_detected(backend: Backend,
                                                       master: MasterKeys) -> None:
    with backend.open(master) as v:
        v.put("tenant-a/api", b"secret-a")
        v.put("tenant-b/api", b"secret-b")
    b_key = _column(backend, "wrapped_key", "tenant-b/api", 1)
    b_ct = _column(backend, "ciphertext", "tenant-b/api", 1)
    _set(backend, "wrapped_key", "tenant-a/api", 1, b_key)
    _set(backend, "ciphertext", "tenant-a/api", 1, b_ct)
    with backend.open(master) as v, pytest.raises(VaultTampered):
        v.get("tenant-a/api")


@pytest.mark.parametrize("column", ["ciphertext", "wrapped_key"])
def test_rolling_back_a_version_is_detected(backend: Backend, master: MasterKeys,
                                            column: str) -> None:
    with backend.open(master) as v:
        v.put("ores/hes-api", b"old-password")
        v.put("ores/hes-api", b"new-password")
    old = _column(backend, column, "ores/hes-api", 1)
    _set(backend, column, "ores/hes-api", 2, old)
    with backend.open(master) as v, pytest.raises(VaultTampered, match="version 2"):
        v.get("ores/hes-api")


def test_rolling_back_a_whole_record_is_detected(backend: Backend, master: MasterKeys) -> None:
    with backend.open(master) as v:
        v.put("ores/hes-api", b"old-password")
        v.put("ores/hes-api", b"new-password")
    for column in ("wrapped_key", "ciphertext"):
        _set(backend, column, "ores/hes-api", 2, _column(backend, column, "ores/hes-api", 1))
    with backend.open(master) as v, pytest.raises(VaultTampered, match="version 2"):
        v.get("ores/hes-api")


@pytest.mark.parametrize("column", ["ciphertext", "wrapped_key"])
@pytest.mark.parametrize("offset", [0, 15, -1])
def test_flipped_byte_is_detected(backend: Backend, master: MasterKeys, column: str,
                                  offset: int) -> None:
    with backend.open(master) as v:
        v.put("a", b"value")
    blob = bytearray(_column(backend, column, "a", 1))
    blob[offset] ^= 0x01
    _set(backend, column, "a", 1, bytes(blob))
    with backend.open(master) as v, pytest.raises(VaultTampered, match="'a' version 1"):
        v.get("a")


def test_truncated_record_is_detected(backend: Backend, master: MasterKeys) -> None:
    with backend.open(master) as v:
        v.put("a", b"value")
    _set(backend, "ciphertext", "a", 1, b"short")
    with backend.open(master) as v, pytest.raises(VaultTampered):
        v.get("a")


@pytest.mark.parametrize(("column", "value"), [("labels", '{"tenant":"evil"}'),
                                               ("kind", "generic"),
                                               ("created", "2001-01-01T00:00:00+00:00")])
def test_altered_metadata_is_detected(backend: Backend, master: MasterKeys, column: str,
                                      value: str) -> None:
    with backend.open(master) as v:
        v.put("a", b"value", kind="privileged-account", labels={"tenant": "ores"})
    backend.sql(f"UPDATE vault_secrets SET {column} = ?", (value,))
    with backend.open(master) as v:
        with pytest.raises(VaultTampered):
            v.meta("a")
        with pytest.raises(VaultTampered):
            v.get("a")
        with pytest.raises(VaultTampered):
            v.list()


# -- locked ------------------------------------------------------------------------
def test_wrong_master_key_is_refused_and_changes_nothing(backend: Backend,
                                                         master: MasterKeys) -> None:
    with backend.open(master) as v:
        v.put("a", b"value")
    before = backend.snapshot()
    wrong = MasterKeys.generate()
    with pytest.raises(VaultLocked, match="v1 is wrong") as exc:
        backend.open(wrong)
    assert base64.b64encode(wrong.keys[1]).decode() not in str(exc.value)
    assert backend.snapshot() == before  # not a byte, not a file, not a table
    with backend.open(master) as v:  # and the right key still works
        assert v.get("a") == b"value"


def test_wrong_master_key_is_refused_even_without_secrets(backend: Backend,
                                                          master: MasterKeys) -> None:
    backend.open(master).close()
    before = backend.snapshot()
    with pytest.raises(VaultLocked):
        backend.open(MasterKeys.generate())
    assert backend.snapshot() == before


def test_missing_master_version_is_refused(backend: Backend, master: MasterKeys) -> None:
    with backend.open(master) as v:
        v.put("a", b"value")
    before = backend.snapshot()
    with pytest.raises(VaultLocked, match=r"v1 needed"):
        backend.open(MasterKeys.generate(version=2))
    assert backend.snapshot() == before


def test_a_new_version_alongside_the_old_one_encrypts_new_secrets(backend: Backend,
                                                                  master: MasterKeys) -> None:
    with backend.open(master) as v:
        v.put("a", b"old")
    both = master.with_new_version()
    with backend.open(both) as v:
        v.put("b", b"new")
        assert (v.get("a"), v.get("b")) == (b"old", b"new")
    rows = backend.sql("SELECT secret_id, master_version FROM vault_secrets ORDER BY 1")
    assert rows == [("a", 1), ("b", 2)]


def test_closed_vault_refuses(backend: Backend, master: MasterKeys) -> None:
    v = backend.open(master)
    v.close()
    v.close()
    with pytest.raises(VaultError, match="closed"):
        v.get("a")


# -- rekey -------------------------------------------------------------------------
def test_rekey_then_open_with_only_the_new_version(backend: Backend, master: MasterKeys) -> None:
    newer = master.with_new_version()
    with backend.open(master) as v:
        for i in range(5):
            v.put(f"s{i}", f"value-{i}".encode())
        v.put("s0", b"value-0b")
        assert v.rekey(newer) == 6
        v.put("after", b"after-rekey")
    only_new = MasterKeys({2: newer.keys[2]})
    with backend.open(only_new) as v:
        assert [v.get(f"s{i}") for i in range(1, 5)] == [f"value-{i}".encode()
                                                         for i in range(1, 5)]
        assert (v.get("s0", 1), v.get("s0"), v.get("after")) == (b"value-0", b"value-0b",
                                                                 b"after-rekey")
    with pytest.raises(VaultLocked, match="v2"):
        backend.open(master)  # the old key alone no longer opens it


def test_rekey_reports_its_progress_row_by_row(backend: Backend, master: MasterKeys) -> None:
    """What GET /admin/vault/rekey and the CLI's bar show: every data key
    re-wrapped, counted against the rows read."""
    steps: list[tuple[int, int]] = []
    with backend.open(master) as v:
        for i in range(4):
            v.put(f"s{i}", b"x")
        assert v.rekey(master.with_new_version(), progress=lambda d, t: steps.append((d, t))) \
            == 4
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_rekey_refuses_key_sets_that_drop_or_change_a_version(backend: Backend, vault: Vault,
                                                              master: MasterKeys) -> None:
    vault.put("a", b"x")
    changed = MasterKeys({1: secrets.token_bytes(32), 2: secrets.token_bytes(32)})
    for bad in (changed, master):
        with pytest.raises(ValueError):
            vault.rekey(bad)
    with pytest.raises(VaultLocked, match="v1"):  # v1 is still in use
        vault.rekey(MasterKeys.generate(version=2))
    assert vault.get("a") == b"x"
    assert [r[0] for r in backend.sql("SELECT version FROM vault_master_keys")] == [1]


def test_rekey_again_after_dropping_the_old_version(backend: Backend, master: MasterKeys) -> None:
    v2 = master.with_new_version()
    with backend.open(master) as v:
        v.put("a", b"x")
        v.rekey(v2)
        only_v2 = MasterKeys({2: v2.keys[2]})
        v3 = only_v2.with_new_version()  # the operator dropped v1 from the key file
        assert v.rekey(v3) == 1
        assert v.get("a") == b"x"
    with backend.open(MasterKeys({3: v3.keys[3]})) as v:
        assert v.get("a") == b"x"


def test_rekey_while_reading_and_writing(backend: Backend, master: MasterKeys) -> None:
    with backend.open(master) as v:
        for i in range(200):
            v.put(f"s{i}", f"value-{i}".encode())
        failures: list[BaseException] = []
        stop, reading = threading.Event(), threading.Event()
        reads = 0

        def reader() -> None:
            nonlocal reads
            for n in range(100_000):  # bounded
                if stop.is_set():
                    return
                try:
                    assert v.get(f"s{n % 200}") == f"value-{n % 200}".encode()
                except BaseException as exc:
                    failures.append(exc)
                    return
                reads += 1
                reading.set()

        def writer() -> None:
            for n in range(100_000):
                if stop.is_set():
                    return
                v.put(f"w{n % 20}", b"w")

        threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
        for t in threads:
            t.start()
        keys = master
        try:
            assert reading.wait(10)
            for _ in range(3):
                keys = keys.with_new_version()
                assert v.rekey(keys) >= 200
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert not failures
        assert reads > 0
    with backend.open(MasterKeys({4: keys.keys[4]})) as v:  # nothing left behind on v1-v3
        metas = v.list()
        assert len(metas) >= 200
        for m in metas:  # including whatever the writer put during the rekeys
            assert v.get(m.id) in (f"value-{m.id[1:]}".encode(), b"w")


# -- master key formats -------------------------------------------------------------
def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = MasterKeys.generate().with_new_version()
    line = ",".join(keys.to_text().split())
    monkeypatch.setenv("GATEWAY_VAULT_KEY", line)
    loaded = MasterKeys.from_env()
    assert dict(loaded.keys) == dict(keys.keys)
    assert loaded.current_version == 2
    monkeypatch.setenv("OTHER_KEY", keys.to_text())  # newlines work too
    assert dict(MasterKeys.from_env("OTHER_KEY").keys) == dict(keys.keys)


@pytest.mark.parametrize("value", ["", "   ", "v1", "1:AAAA", "v0:" + "A" * 44,
                                   "v1:" + base64.b64encode(b"short").decode(),
                                   "v1:not*base64", "v1:{k},v1:{k}"])
def test_from_env_refuses_bad_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    value = value.replace("{k}", key)
    monkeypatch.setenv("GATEWAY_VAULT_KEY", value)
    with pytest.raises(VaultLocked, match="GATEWAY_VAULT_KEY") as exc:
        MasterKeys.from_env()
    assert key not in str(exc.value)


def test_from_env_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_VAULT_KEY", raising=False)
    with pytest.raises(VaultLocked, match="GATEWAY_VAULT_KEY is not set"):
        MasterKeys.from_env()


def test_from_file_and_the_0600_rule(tmp_path: Path) -> None:
    keys = MasterKeys.generate().with_new_version()
    path = tmp_path / "vault.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ("# vault master keys\n\n" + keys.to_text()).encode())
    os.close(fd)
    assert dict(MasterKeys.from_file(path).keys) == dict(keys.keys)
    path.chmod(0o644)
    with pytest.raises(VaultLocked, match=r"mode 0644.*chmod 600") as exc:
        MasterKeys.from_file(path)
    assert base64.b64encode(keys.keys[1]).decode() not in str(exc.value)
    path.chmod(0o640)
    with pytest.raises(VaultLocked):
        MasterKeys.from_file(path)
    with pytest.raises(VaultLocked, match="does not exist"):
        MasterKeys.from_file(tmp_path / "missing.key")


def test_master_keys_helpers() -> None:
    keys = MasterKeys.generate(version=3)
    assert keys.current_version == 3
    newer = keys.with_new_version()
    assert sorted(newer.keys) == [3, 4] and newer.keys[3] == keys.keys[3]
    assert "versions=[3, 4]" in repr(newer)
    assert base64.b64encode(keys.keys[3]).decode() not in repr(newer)
    with pytest.raises(ValueError):
        MasterKeys({1: b"short"})
    with pytest.raises(ValueError):
        MasterKeys({})


def test_not_a_vault_file(tmp_path: Path, master: MasterKeys) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(VaultError, match="not a usable vault"):
        SqliteVault(path, master)


# -- crypto-shredding --------------------------------------------------------------
def test_delete_versions_before_shreds_old_versions(backend: Backend, vault: Vault) -> None:
    for n in range(1, 4):
        vault.put("ores/hes-api", f"pw-{n}".encode())
    old_keys = [_column(backend, "wrapped_key", "ores/hes-api", n) for n in (1, 2)]
    assert vault.delete_versions_before("ores/hes-api", 3) == 2
    for n in (1, 2):
        with pytest.raises(SecretNotFound):
            vault.get("ores/hes-api", n)
    assert vault.get("ores/hes-api") == b"pw-3"
    assert [m.version for m in vault.versions("ores/hes-api")] == [3]
    if backend.postgres:
        # No row version, live or dead, holds them any more (VACUUM after the
        # shred). The freed bytes of a page and the WAL may: PostgreSQL does
        # not zero them (gateway/vault/_postgres.py says what that means).
        backend.sql("CREATE EXTENSION IF NOT EXISTS pageinspect")
        (pages,) = backend.sql("SELECT pg_relation_size('vault_secrets') / "
                               "current_setting('block_size')::int")[0]
        tuples = [t for n in range(pages) for (t,) in backend.sql(
            "SELECT t_data FROM heap_page_items(get_raw_page('vault_secrets', ?))", (n,))]
        assert tuples and not any(t and k in t for t in tuples for k in old_keys)
    else:
        everything = backend.stored_bytes()
        assert not any(k in everything for k in old_keys)  # gone from free pages and the WAL
    assert vault.put("ores/hes-api", b"pw-4").version == 4  # numbers are never reused
    assert vault.delete_versions_before("ores/hes-api", 1) == 0


def test_delete_versions_before_keeps_the_latest(vault: Vault) -> None:
    vault.put("a", b"x")
    with pytest.raises(ValueError, match="latest"):
        vault.delete_versions_before("a", 2)
    with pytest.raises(SecretNotFound):
        vault.delete_versions_before("b", 1)
    assert vault.get("a") == b"x"


# -- layering ----------------------------------------------------------------------
def test_vault_imports_no_aiohttp() -> None:
    code = ("import sys, gateway.vault\n"
            "sys.exit(1 if any(m.split('.')[0] == 'aiohttp' for m in sys.modules) else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_key_module_is_private_to_the_vault() -> None:
    gateway = Path(__file__).resolve().parents[2] / "gateway"
    importers = [p for p in gateway.rglob("*.py") if p.parent.name != "vault"
                 and re.search(r"gateway\.vault\._keys|vault import\b.*\b_keys",
                               p.read_text(encoding="utf-8"))]
    assert importers == []
