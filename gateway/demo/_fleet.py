"""The demo as a fleet (``gateway demo --replicas N``): a local PostgreSQL
cluster under the work directory, the simulated shared systems in this
process, and the gateway as separate processes sharing that state: one
control plane (the admin plane and the control duties) and N data-plane
replicas, all on loopback. Also what the fleet tests start.

Each gateway process is ``python -m gateway serve --config FILE`` with a
config of its own (work_dir/fleet/<id>.toml), its log in
work_dir/fleet/<id>.log. ``fleet.json`` says where everything is.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from cryptography import x509

from gateway.demo._banner import admin_environment, curl_tls, partner_lines
from gateway.demo._devpki import reissue
from gateway.demo._partner_tls import client_tls
from gateway.demo._ports import spare_port
from gateway.demo._postgres import LocalCluster
from gateway.demo._stack import LOOPBACK, Stack, StackPorts
from gateway.demo.simulators.hes import configure_push
from gateway.pki import import_certificate
from gateway.state import PostgresStore, data_plane_grants

READY_TIMEOUT_S = 60.0
DATA_ROLE = "gateway_data"  # the data-plane replicas' database role
STOP_TIMEOUT_S = 20.0


def _serial(cert: Path) -> str:
    return f"{x509.load_pem_x509_certificate(cert.read_bytes()).serial_number:X}"


def _set_port(config: str, listener: str, port: int) -> str:
    """``port = N`` of ``[listeners.<listener>]`` in a config we wrote."""
    pattern = rf"(\[listeners\.{listener}\]\nhost = \"[^\"]*\"\nport = )\d+"
    new, count = re.subn(pattern, rf"\g<1>{port}", config)
    assert count == 1, listener
    return new


def _without_table(config: str, table: str) -> str:
    return re.sub(rf"\n\[{re.escape(table)}\]\n(?:[^\[\n].*\n|\n)*", "\n", config)


@dataclass
class ReplicaProcess:
    id: str
    role: str
    config: Path
    log: Path
    data_port: int | None
    ops_port: int
    admin_port: int | None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            # Our own interpreter and module, a config we wrote.
            self.proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """/readyz of this replica: (status, body); (0, {}) when it does not answer."""
        url = f"http://{LOOPBACK}:{self.ops_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return 0, {}

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.id} exited ({self.proc and self.proc.returncode}); "
                                   f"its log:\n{self.log_tail()}")
            if self.readiness()[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.id} not ready within {timeout_s:.0f} s; its log:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signum)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "role": self.role,
                               "pid": self.pid if self.proc else None,
                               "ops": f"{LOOPBACK}:{self.ops_port}"}
        if self.data_port is not None:
            out["data"] = f"{LOOPBACK}:{self.data_port}"
        if self.admin_port is not None:
            out["admin"] = f"{LOOPBACK}:{self.admin_port}"
        return out


@dataclass
class Fleet:
    """The control plane(s) and ``replicas`` data-plane replicas on one
    PostgreSQL. ``postgres_url``: use that database (tests) instead of a
    cluster of our own under ``work_dir/postgres``."""

    tenants_dir: Path
    certs_dir: Path
    work_dir: Path
    replicas: int = 2
    control_planes: int = 1
    ports: StackPorts = field(default_factory=StackPorts)
    postgres_url: str | None = None
    # Whole TOML tables or [gateway]/[fleet] lines for every process (tests).
    extra_config: str = ""
    fleet_settings: str = ""
    push_settings: str = ""  # lines for the [push] table (tests: a short lease)
    stack_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cluster: LocalCluster | None = None
        self.dsn = ""
        self.stack: Stack | None = None
        self.control: list[ReplicaProcess] = []
        self.data: list[ReplicaProcess] = []
        self.dir = self.work_dir / "fleet"

    # -- start ------------------------------------------------------------------
    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.postgres_url is None:
            self.cluster = LocalCluster(self.work_dir / "postgres")
            await asyncio.to_thread(self.cluster.start)
            self.dsn = await asyncio.to_thread(self.cluster.database, "gateway")
        else:
            self.dsn = self.postgres_url
        stack = self.stack = Stack(
            tenants_dir=self.tenants_dir, certs_dir=self.certs_dir, work_dir=self.work_dir,
            ports=self.ports, run_gateway=False, extra_config=self.extra_config,
            state_url=self.dsn, **self.stack_options)
        await stack.start()
        await asyncio.to_thread(self._import_dev_certificates)
        base = stack.config_path.read_text()
        data_port, ops_port, admin_port = stack.gateway_ports
        for i in range(self.control_planes):
            self.control.append(self._process(
                base, f"control-{i}", "control", data=None, ops=spare_port(LOOPBACK),
                admin=admin_port if i == 0 else spare_port(LOOPBACK)))
        for i in range(self.replicas):
            self.data.append(self._process(
                base, f"data-{i}", "data", data=data_port if i == 0 else spare_port(LOOPBACK),
                ops=ops_port if i == 0 else spare_port(LOOPBACK), admin=None))
        # The control plane first: it adopts the CA and publishes the CRLs
        # the data plane's handshakes check.
        # The first control plane alone, so it is the one that leads; then
        # its standbys and the data plane, side by side.
        self.control[0].start()
        await asyncio.to_thread(self.control[0].wait_ready)
        # The schema exists now: the data plane's role gets its grants, no more.
        await asyncio.to_thread(self._grant_data_role)
        for proc in [*self.control[1:], *self.data]:
            proc.start()
        for proc in [*self.control[1:], *self.data]:
            await asyncio.to_thread(proc.wait_ready)
        pki = stack.pki
        # The HES pushes its daily batch to the first replica.
        configure_push(stack.apps["hes"], f"https://{LOOPBACK}:{self.data[0].data_port}"
                       "/push/hes/batches", client_tls(
                           pki.ca_cert, pki.client_cert("hes-operator", "pusher"),
                           pki.client_key("hes-operator", "pusher")))
        self.write_description()

    def _process(self, base: str, replica_id: str, role: str, *, data: int | None, ops: int,
                 admin: int | None) -> ReplicaProcess:
        config = _set_port(base, "data", data or 0)
        config = _set_port(config, "ops", ops)
        config = _set_port(config, "admin", admin or 0)
        dsn = self.dsn
        if role == "data":
            config = _without_table(config, "ca")  # the CA key stays on the control plane
            dsn = self.data_dsn  # and a role of least privilege in the database
        config += (f'\n[state]\nurl = "{dsn}"\n\n[fleet]\nrole = "{role}"\n'
                   f'replica_id = "{replica_id}"\n{self.fleet_settings.strip()}\n')
        if self.push_settings:
            config = config.replace("\n[push]\n", f"\n[push]\n{self.push_settings.strip()}\n", 1)
        path = self.dir / f"{replica_id}.toml"
        path.write_text(config)
        return ReplicaProcess(replica_id, role, path, self.dir / f"{replica_id}.log", data,
                              ops, admin)

    @property
    def data_dsn(self) -> str:
        """The database URL of the data-plane replicas: the same database as
        the data plane's role (``DATA_ROLE``, gateway.state.data_plane_grants)."""
        parts = urlsplit(self.dsn)
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit(parts._replace(netloc=f"{DATA_ROLE}@{host}"))

    def _grant_data_role(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as db:
            if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                          (DATA_ROLE,)).fetchone() is None:
                db.execute(f"CREATE ROLE {DATA_ROLE} LOGIN")  # our own constant
            db.execute(data_plane_grants(DATA_ROLE).encode())

    def _import_dev_certificates(self) -> None:
        """The dev certificates were issued outside the admin API: record them
        in the shared state (revocation by principal and the access review
        know them); one revoked in an earlier demo run is issued anew."""
        assert self.stack is not None
        store = PostgresStore(self.dsn)
        try:
            pki = self.stack.pki
            now = datetime.now(UTC)
            for tenant in self.stack.registry:
                for p in tenant.principals.values():
                    key = (tenant.id, p.kind, p.name)
                    path = pki.client_cert(tenant.id, p.name)
                    rec = store.certificate(_serial(path))
                    if rec is not None and rec.status == "revoked":
                        reissue(pki, pki.authority(), tenant.id, p.kind, p.name)
                    import_certificate(store, path.read_bytes(), key, now)
        finally:
            store.close()

    # -- what runs ----------------------------------------------------------------
    def description(self) -> dict[str, Any]:
        return {"postgres": self.dsn,
                "admin": f"{LOOPBACK}:{self.control[0].admin_port}",
                "control": [c.describe() for c in self.control],
                "replicas": [r.describe() for r in self.data]}

    def write_description(self) -> Path:
        path = self.work_dir / "fleet.json"
        path.write_text(json.dumps(self.description(), indent=1) + "\n")
        return path

    def restart(self, proc: ReplicaProcess) -> None:
        """Start a stopped or killed process again, on its ports."""
        proc.start()
        proc.wait_ready()
        self.write_description()

    # -- stop ----------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop whatever started (also after a start that failed half-way)."""
        try:
            for proc in [*self.data, *self.control]:
                await asyncio.to_thread(proc.stop)
            if self.stack is not None:
                await self.stack.stop()
        finally:
            if self.cluster is not None:
                await asyncio.to_thread(self.cluster.stop)


def fleet_banner(fleet: Fleet) -> str:
    assert fleet.stack is not None
    pki = fleet.stack.pki
    ds = fleet.stack.dataset
    own = next(m["serial"] for m in ds.meters if m["owners"][-1]["tenant"] == "ores"
               and not m["airplane_mode"])
    cacert, cert = curl_tls(pki, "ores", "api")
    serial = _serial(pki.client_cert("ores", "api"))
    lines = [f"  {r.id:<10} pid {r.pid:<7} data https://localhost:{r.data_port}  "
             f"ops http://127.0.0.1:{r.ops_port}" for r in fleet.data]
    control = [f"  {c.id:<10} pid {c.pid:<7} admin https://localhost:{c.admin_port}  "
               f"ops http://127.0.0.1:{c.ops_port}" for c in fleet.control]
    first = fleet.data[0]
    return f"""
Shared-grid gateway fleet is running (Ctrl-C to stop): {len(fleet.data)} data-plane replicas,
{len(fleet.control)} control plane, state in PostgreSQL.

  postgres   {fleet.dsn}
{chr(10).join(control)}
{chr(10).join(lines)}
  described in {fleet.work_dir / 'fleet.json'}; logs in {fleet.dir}/
{chr(10).join(partner_lines(fleet.stack))}

Try (as ORES), on each replica:
  curl {cacert} {cert} https://localhost:{first.data_port}/hes/meters/{own}
  curl -s http://127.0.0.1:{first.ops_port}/metrics | grep -E 'gateway_replicas_live|leader'

Revoke ORES's API certificate on the control plane as the security admin alice
({pki.client_cert('ores', 'alice')}), then every replica refuses it:
  {admin_environment(pki, f'https://localhost:{fleet.control[0].admin_port}')}
  gateway certs revoke {serial} --code key-compromise --reason "tour"
"""


__all__ = ["Fleet", "ReplicaProcess", "fleet_banner"]
