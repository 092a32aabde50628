"""Backup and restore of the embedded state, end to end: ``gateway state
backup`` copies the state of a running gateway, ``gateway state restore``
puts it in a fresh work directory, and a gateway started there serves the
same credentials: a certificate issued before the backup connects over
mTLS, one revoked before it is refused, the same signing key is published."""

from __future__ import annotations

import http.client
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.demo._stack import Stack

from .conftest import REPO, RunningStack, start_stack
from .test_credentials import admin, ctx_for, fetch, meter_of, new_identity


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, in its own process, under umask 000 (so only the
    gateway's own choice of mode protects what it writes)."""
    return subprocess.run(["/bin/sh", "-c", 'umask 000 && exec "$@"', "sh",
                           sys.executable, "-m", "gateway", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def kids(gw: RunningStack) -> set[str]:
    return {k["kid"] for k in gw.ops("/.well-known/jwks.json").json["keys"]}


def test_a_backup_of_a_running_gateway_restores_into_a_fresh_work_directory(
        tmp_path: Path) -> None:
    first = start_stack(tmp_path)
    try:
        kept, kept_key, kept_doc = new_identity(first, tmp_path, "sibelga")
        gone, gone_key, gone_doc = new_identity(first, tmp_path, "sibelga", "field-ops")
        assert admin(first, "POST", f"/admin/certs/{gone_doc['serial']}/revoke",
                     {"reason": "before the backup"}).status == 200
        published = kids(first)
        config = first.stack.work_dir / "gateway.toml"
        backup = tmp_path / "backups" / "state.db"
        done = gateway_cli("state", "backup", "--config", str(config), "--out", str(backup))
        assert done.returncode == 0, done.stderr
        assert "CA and signing keys" in done.stdout
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        # The running gateway's own state is not replaced under it, --force or not.
        for force in ([], ["--force"]):
            refused = gateway_cli("state", "restore", "--from", str(backup),
                                  "--config", str(config), *force)
            assert refused.returncode == 1, refused.stdout
        assert "in use" in refused.stderr
        path = f"/hes/meters/{meter_of(first, 'sibelga')}"
        assert fetch(first, ctx_for(first, kept, kept_key), path) == 200
    finally:
        first.stop()

    fresh = tmp_path / "fresh"
    restored = gateway_cli("state", "restore", "--from", str(backup),
                           "--db", str(fresh / "state.db"))
    assert restored.returncode == 0, restored.stderr
    assert stat.S_IMODE((fresh / "state.db").stat().st_mode) == 0o600
    second = RunningStack(Stack(tenants_dir=REPO / "tenants", certs_dir=tmp_path / "certs",
                                work_dir=fresh)).start()
    try:
        # The certificate issued before the backup is known and serves.
        assert fetch(second, ctx_for(second, kept, kept_key), path) == 200
        listed = admin(second, "GET", "/admin/certs?tenant=sibelga").json["certificates"]
        assert {c["serial"]: c["status"] for c in listed}[kept_doc["serial"]] == "active"
        # The revocation came along: refused in the handshake (the CRL).
        with pytest.raises((ssl.SSLError, ConnectionResetError,
                            http.client.RemoteDisconnected)):
            fetch(second, ctx_for(second, gone, gone_key), path)
        # The same signing keys, not new ones.
        assert kids(second) == published
    finally:
        second.stop()
