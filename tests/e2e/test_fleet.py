"""The gateway as a fleet: separate processes sharing one PostgreSQL (the
session's real cluster), over real sockets. Two control planes (one active,
by the advisory lock) and two data-plane replicas, started as `gateway demo
--replicas` starts them (gateway.demo.Fleet).

- D8: a revocation on the control plane is refused by every replica within
  1 s, on new connections (the CRL in the handshake) and on open ones;
- the fleet counts its live replicas and divides each tenant's rate among
  them: the fleet-wide admitted rate stays within the tenant's quota;
- a replica killed with SIGKILL leaves the count, and comes back;
- the active control plane killed: the standby takes the lock and the
  control duties, and a revocation still reaches every replica.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509

from gateway.demo import Fleet, ReplicaProcess, fleet_banner
from gateway.tls import client_context
from tests.postgres import Cluster

from .conftest import REPO, Client

QUOTA_RATE = 20.0  # sibelga's requests per second, fleet-wide (its tenant file, below)
QUOTA_BURST = 10


class RunningFleet:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.run(self.fleet.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    @property
    def stack(self) -> Any:
        return self.fleet.stack

    @property
    def pki(self) -> Any:
        return self.fleet.stack.pki

    def ctx(self, tenant: str, name: str) -> ssl.SSLContext:
        return client_context(self.pki.ca_cert, self.pki.client_cert(tenant, name),
                              self.pki.client_key(tenant, name))

    def meter_of(self, tenant: str) -> str:
        return next(m["serial"] for m in self.fleet.stack.dataset.meters
                    if m["owners"][-1]["tenant"] == tenant and not m["airplane_mode"])

    def admin(self, control: ReplicaProcess, method: str, path: str,
              body: dict[str, Any] | None = None, who: str = "alice"
              ) -> tuple[int, dict[str, Any]]:
        ctx = self.ctx("ores", who)
        assert control.admin_port is not None
        conn = http.client.HTTPSConnection("127.0.0.1", control.admin_port, context=ctx,
                                           timeout=15)
        try:
            conn.request(method, path, body=json.dumps(body or {}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()


def metric(proc: ReplicaProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.ops_port}/metrics",
                                timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not on replica {proc.id}")


def wait_until(check: Any, timeout_s: float, step_s: float = 0.02) -> float:
    """Seconds until ``check()`` held; fails after ``timeout_s`` (bounded)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(step_s)
    raise AssertionError(f"not within {timeout_s} s")


def handshake_refused(port: int, ctx: ssl.SSLContext) -> bool:
    """A new connection: True when the TLS handshake (or the first request)
    is refused."""
    client = Client(port, ctx)
    try:
        return client.get("/hes/meters").status == 403
    except (ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected,
            BrokenPipeError):
        return True
    finally:
        client.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: Cluster) -> Iterator[RunningFleet]:
    root = tmp_path_factory.mktemp("fleet")
    tenants = root / "tenants"
    shutil.copytree(REPO / "tenants", tenants)
    with (tenants / "sibelga.toml").open("a") as fh:
        fh.write(f"\n[quota]\nrate_per_s = {QUOTA_RATE}\nburst = {QUOTA_BURST}\n")
    running = RunningFleet(Fleet(
        tenants_dir=tenants, certs_dir=root / "certs", work_dir=root / "work", replicas=2,
        control_planes=2, postgres_url=postgres.new_database(),
        fleet_settings="heartbeat_interval_s = 0.2", push_settings="lease_s = 2",
        extra_config="[audit]\nfleet_checkpoint_interval_s = 0.5\n"))
    try:
        running.run(running.fleet.start())
    except BaseException:
        running.stop()
        raise
    yield running
    running.stop()


def test_fleet_json_says_where_everything_runs(fleet: RunningFleet) -> None:
    doc = json.loads((fleet.fleet.work_dir / "fleet.json").read_text())
    assert doc["postgres"].startswith("postgresql://")
    assert doc["admin"] == f"127.0.0.1:{fleet.fleet.control[0].admin_port}"
    assert [r["id"] for r in doc["replicas"]] == ["data-0", "data-1"]
    for entry, proc in zip(doc["replicas"], fleet.fleet.data, strict=True):
        assert entry["pid"] == proc.pid and proc.alive()
        assert entry["data"] == f"127.0.0.1:{proc.data_port}"
        assert entry["ops"] == f"127.0.0.1:{proc.ops_port}"


def test_the_fleet_banner_names_every_partner_and_this_run_s_certificates(
        fleet: RunningFleet) -> None:
    stack = fleet.fleet.stack
    assert stack is not None
    banner = fleet_banner(fleet.fleet)
    for port in (*stack.sim_ports.values(), stack.receivers_port,
                 fleet.fleet.control[0].admin_port):
        assert f"https://localhost:{port}" in banner
    assert "certs/dev" not in banner  # the fleet's --certs, everywhere
    assert f"GATEWAY_ADMIN_CERT={stack.pki.client_cert('ores', 'alice')}" in banner


def test_one_control_plane_leads_and_every_replica_counts_the_fleet(
        fleet: RunningFleet) -> None:
    control, standby = fleet.fleet.control
    wait_until(lambda: metric(control, "gateway_control_plane_leader") == 1, 5)
    assert metric(standby, "gateway_control_plane_leader") == 0
    for proc in fleet.fleet.data:
        assert metric(proc, "gateway_control_plane_leader") == 0
        wait_until(lambda p=proc: metric(p, "gateway_replicas_live") == 2, 5)
        status, ready = proc.readiness()
        assert status == 200 and (ready["role"], ready["replica"]) == ("data", proc.id)


def test_a_revocation_reaches_every_replica_within_a_second(fleet: RunningFleet) -> None:
    """D8: revoke once on the control plane; every replica refuses the
    certificate within 1 s, on an open keep-alive connection (403) and in a
    new handshake (the CRL the control plane signed and published)."""
    ctx = fleet.ctx("ores", "api")
    path = f"/hes/meters/{fleet.meter_of('ores')}"
    open_conns = [Client(p.data_port or 0, ctx) for p in fleet.fleet.data]
    assert [c.get(path).status for c in open_conns] == [200, 200]
    serial = _serial(fleet, "ores")
    status, doc = fleet.admin(fleet.fleet.control[0], "POST", f"/admin/certs/{serial}/revoke",
                              {"reason": "laptop stolen", "code": "key-compromise"})
    assert status == 200 and doc["status"] == "revoked"
    for conn, proc in zip(open_conns, fleet.fleet.data, strict=True):
        took = wait_until(lambda c=conn: c.get(path).status == 403, 1.0)
        assert took < 1.0, proc.id
        wait_until(lambda p=proc: handshake_refused(p.data_port or 0, ctx), 1.0)
        conn.close()


def test_a_replica_that_lost_its_database_connections_still_follows_revocations(
        fleet: RunningFleet) -> None:
    """Every connection of data-1 to PostgreSQL is cut (its listener, its
    state reads, its heartbeat: they carry application_name gateway/data-1).
    It reconnects on its own; a revocation after that is refused there within
    1 s like everywhere else (D8)."""
    dsn = fleet.fleet.dsn

    def backends() -> int:
        with psycopg.connect(dsn) as db:
            row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                             "application_name = 'gateway/data-1'").fetchone()
        return int(row[0]) if row else 0

    assert backends() >= 2  # the listener and the state store at least
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name = 'gateway/data-1'")
    wait_until(lambda: backends() >= 2, 10, 0.1)  # back on its own
    ctx = fleet.ctx("resa", "api")
    path = f"/hes/meters/{fleet.meter_of('resa')}"
    second = fleet.fleet.data[1]
    conn = Client(second.data_port or 0, ctx)
    wait_until(lambda: conn.get(path).status == 200, 5)  # serving again, not stale
    status, _ = fleet.admin(fleet.fleet.control[0], "POST",
                            f"/admin/certs/{_serial(fleet, 'resa')}/revoke",
                            {"reason": "test", "code": "superseded"})
    assert status == 200
    took = wait_until(lambda: conn.get(path).status == 403, 1.0)
    assert took < 1.0
    conn.close()


def _serial(fleet: RunningFleet, tenant: str, name: str = "api") -> str:
    cert = x509.load_pem_x509_certificate(fleet.pki.client_cert(tenant, name).read_bytes())
    return f"{cert.serial_number:X}"


def test_the_fleet_admits_a_tenant_within_its_quota(fleet: RunningFleet) -> None:
    """Each of the 2 live replicas admits sibelga's rate / 2 (Kong's `local`
    policy): the fleet admits at most rate x seconds + the burst (ε: one
    bucket's slack per replica), and no less than 90 % of the rate."""
    ctx = fleet.ctx("sibelga", "api")
    path = f"/hes/meters/{fleet.meter_of('sibelga')}"
    clients = [Client(p.data_port or 0, ctx) for p in fleet.fleet.data]
    admitted, refused = 0, 0
    seconds = 3.0
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds and sent < 20_000:  # bounded in time and count
        for client in clients:
            status = client.get(path).status
            sent += 1
            admitted += status == 200
            refused += status == 429
    elapsed = time.monotonic() - start
    for client in clients:
        client.close()
    assert refused > 0  # the loop offered more than the quota
    assert admitted <= QUOTA_RATE * elapsed + QUOTA_BURST + 2, (admitted, elapsed)
    assert admitted >= 0.9 * QUOTA_RATE * seconds, (admitted, elapsed)


def test_the_fleet_s_audit_trail_verifies_and_names_a_truncated_replica(
        fleet: RunningFleet) -> None:
    """D10 across the fleet: every replica ships its chain, the control plane
    signs fleet checkpoints over their heads; `gateway audit verify --fleet`
    passes, and fails naming the replica whose shipped chain was cut."""
    dsn = fleet.fleet.dsn
    verify = [sys.executable, "-m", "gateway", "audit", "verify", "--fleet", dsn]
    ctx = fleet.ctx("sibelga", "api")
    for proc in fleet.fleet.data:  # a few lines on each chain, whichever tests ran before
        client = Client(proc.data_port or 0, ctx)
        for _ in range(4):
            client.get(f"/hes/meters/{fleet.meter_of('sibelga')}")
        client.close()

    def fleet_checkpoint_covers_every_replica() -> bool:
        """A fleet checkpoint names both data replicas, data-1's head past the
        lines the cut below keeps: else the cut would remove nothing a
        checkpoint vouches for, and the chain would rightly verify."""
        with psycopg.connect(dsn) as db:
            row = db.execute("SELECT record FROM fleet_checkpoints ORDER BY n DESC "
                             "LIMIT 1").fetchone()
        heads = json.loads(row[0])["heads"] if row is not None else {}
        return {"data-0", "data-1"} <= set(heads) and heads["data-1"]["seq"] > 2

    wait_until(fleet_checkpoint_covers_every_replica, 30, 0.2)
    ok = subprocess.run(verify, capture_output=True, text=True, timeout=120, check=False)
    doc = json.loads(ok.stdout)
    assert ok.returncode == 0 and doc["ok"], doc
    assert {"control-0", "data-0", "data-1"} <= set(doc["replicas"])
    assert doc["fleet_checkpoints"] >= 1
    with psycopg.connect(dsn, autocommit=True) as db:
        cut = db.execute("DELETE FROM audit_lines WHERE replica = 'data-1' AND seq > 2")
        assert cut.rowcount > 0
    bad = subprocess.run(verify, capture_output=True, text=True, timeout=120, check=False)
    doc = json.loads(bad.stdout)
    assert bad.returncode == 1 and doc["bad_replica"] == "data-1", doc
    # Named either way: its chain cut short of a fleet checkpoint's head, or,
    # once it shipped new lines after the cut, lines missing in the middle.
    assert doc["problem"].startswith("replica data-1: ")
    assert "truncated" in doc["problem"] or "deleted" in doc["problem"]


def relations_digest_of(proc: ReplicaProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.ops_port}/metrics",
                                timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('gateway_relations_digest_info{digest="'):
                return line.split('"')[1]
    return ""


def test_the_control_plane_publishes_the_relation_snapshot_every_replica_uses(
        fleet: RunningFleet) -> None:
    """One relation snapshot for the whole fleet: the active control plane
    publishes it (content-addressed, SHA-256); every replica fetches,
    verifies and swaps it in. A feed change on the control plane (SIGHUP)
    reaches every replica: Fluvius loses a meter, every replica refuses it."""
    control = fleet.fleet.control[0]
    digest = relations_digest_of(control)
    for proc in fleet.fleet.data:
        wait_until(lambda p=proc: relations_digest_of(p) == digest, 5)
    feed = fleet.fleet.stack.work_dir / "relations.json"
    original = feed.read_bytes()
    meter = fleet.meter_of("fluvius")
    doc = json.loads(original)
    doc["relations"] = [r for r in doc["relations"] if r["id"] != meter]
    fluvius = fleet.ctx("fluvius", "api")
    path = f"/hes/meters/{meter}"
    for proc in fleet.fleet.data:
        client = Client(proc.data_port or 0, fluvius)
        assert client.get(path).status == 200
        client.close()
    try:
        feed.write_text(json.dumps(doc))
        control.signal(signal.SIGHUP)
        wait_until(lambda: relations_digest_of(control) != digest, 10)
        changed = relations_digest_of(control)
        for proc in fleet.fleet.data:
            wait_until(lambda p=proc: relations_digest_of(p) == changed, 5)
            client = Client(proc.data_port or 0, fluvius)
            assert client.get(path).status == 403  # no relation any more, on every replica
            client.close()
    finally:
        feed.write_bytes(original)
        control.signal(signal.SIGHUP)
    for proc in fleet.fleet.data:
        wait_until(lambda p=proc: relations_digest_of(p) == digest, 10)
    # The replicas of one host map one content-addressed file: one copy in memory.
    snap = fleet.fleet.stack.work_dir / "relations" / f"{digest}.snap"
    assert snap.exists()
    for proc in fleet.fleet.data:
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert str(snap) in maps, proc.id


def _sim(fleet: RunningFleet, method: str, path: str, body: Any = None) -> Any:
    """The demo receivers' control endpoints (what arrived; up, down, slow)."""
    stack = fleet.fleet.stack
    assert stack is not None
    conn = http.client.HTTPSConnection("127.0.0.1", stack.receivers_port,
                                       context=fleet.ctx("ores", "alice"), timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"X-Sim-Control": stack.control_token,
                              "Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_two_checkouts_racing_on_two_control_planes_give_one_lease(
        fleet: RunningFleet) -> None:
    """D7 across the fleet: the break-glass case lives in the shared state and
    every step is a compare-and-set; the same approved case checked out at
    once through both control planes' admin APIs gives exactly one lease and
    one password, the other gets 409."""
    first, second = fleet.fleet.control
    status, case = fleet.admin(first, "POST", "/admin/breakglass/requests", {
        "account": "cmh-admin", "reason": "portal stuck", "ticket": "CHG-2001",
        "duration_s": 600}, who="grace")
    assert status == 201, case
    cid = case["id"]
    status, _ = fleet.admin(second, "POST", f"/admin/breakglass/requests/{cid}/approve",
                            {"reason": "ok per CHG-2001"}, who="heidi")
    assert status == 200
    results: list[tuple[int, dict[str, Any]]] = []
    start = threading.Barrier(2)

    def checkout(control: ReplicaProcess) -> None:
        start.wait()
        results.append(fleet.admin(control, "POST",
                                   f"/admin/breakglass/requests/{cid}/checkout",
                                   {"reason": "fixing"}, who="grace"))

    threads = [threading.Thread(target=checkout, args=(c,)) for c in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(code for code, _ in results)
    assert statuses == [200, 409], results
    assert sum("credential" in doc for _, doc in results) == 1  # one password handed out
    status, _ = fleet.admin(first, "POST", f"/admin/breakglass/requests/{cid}/checkin",
                            {"reason": "done"}, who="grace")
    assert status == 200


def test_a_replica_killed_while_it_delivers_loses_no_part(fleet: RunningFleet) -> None:
    """D5 across the fleet: one outbox in PostgreSQL, the replicas claim its
    parts under leases (2 s here). Kill -9 the replica holding a lease mid
    delivery: the other takes the part over when the lease runs out; every
    part arrives, each record once, a redelivery only under the part's one
    Idempotency-Key, and the outbox ends with every part delivered."""
    from tests.e2e.test_push import mixed_batch

    stack = fleet.fleet.stack
    assert stack is not None
    tenants = ["ores", "fluvius", "sibelga", "resa", "pidpa", "farys", "swde"]
    for t in tenants:
        _sim(fleet, "POST", f"/_sim/receivers/{t}/mode", {"mode": "slow"})
    batch, expect = mixed_batch(fleet, "HES-FLEET-0001")  # type: ignore[arg-type]
    pusher = Client(fleet.fleet.data[0].data_port or 0, fleet.ctx("hes-operator", "pusher"))
    resp = pusher.request("POST", "/push/hes/batches", body=batch)
    pusher.close()
    assert resp.status == 202, resp.body
    dsn = fleet.fleet.dsn

    def holder() -> str | None:
        with psycopg.connect(dsn) as db:
            row = db.execute("SELECT lease_owner FROM outbox_parts WHERE status = 'pending' "
                             "AND lease_until > now() AND batch_id = 'HES-FLEET-0001' "
                             "LIMIT 1").fetchone()
        return None if row is None else str(row[0])

    owner = wait_until(lambda: holder() is not None, 10) and holder()
    victim = next(p for p in fleet.fleet.data if p.id == owner)
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    for t in tenants:
        _sim(fleet, "POST", f"/_sim/receivers/{t}/mode", {"mode": "up"})

    def all_delivered() -> bool:
        with psycopg.connect(dsn) as db:
            rows = db.execute("SELECT DISTINCT status FROM outbox_parts WHERE "
                              "batch_id = 'HES-FLEET-0001'").fetchall()
        return [r[0] for r in rows] == ["delivered"]

    wait_until(all_delivered, 40, 0.2)
    for tenant, keys in expect["parts"].items():
        got = _sim(fleet, "GET", f"/_sim/received/{tenant}")["parts"]
        mine = {k: v for k, v in got.items() if "/HES-FLEET-0001/" in k}
        assert list(mine) == [f"hes-operator/HES-FLEET-0001/{tenant}"]  # one key per part
        records = [(r["meter"], r["timestamp"]) for v in mine.values() for r in v["records"]]
        assert sorted(records) == sorted(keys), tenant  # each record once, to its owner
    fleet.fleet.restart(victim)


def test_a_killed_replica_leaves_the_count_and_comes_back(fleet: RunningFleet) -> None:
    first, second = fleet.fleet.data
    assert second.proc is not None
    second.proc.send_signal(signal.SIGKILL)
    second.proc.wait(10)
    wait_until(lambda: metric(first, "gateway_replicas_live") == 1, 5)
    ctx = fleet.ctx("fluvius", "api")
    client = Client(first.data_port or 0, ctx)
    assert client.get(f"/hes/meters/{fleet.meter_of('fluvius')}").status == 200  # still served
    client.close()
    fleet.fleet.restart(second)
    wait_until(lambda: metric(first, "gateway_replicas_live") == 2, 5)


def test_the_standby_takes_over_when_the_active_control_plane_dies(
        fleet: RunningFleet) -> None:
    """Kill -9 the active control plane: its session ends, the lock is free,
    the standby takes it within seconds and runs the control duties; a
    revocation through it still reaches every replica (it signs the CRL)."""
    active, standby = fleet.fleet.control
    assert active.proc is not None
    active.proc.send_signal(signal.SIGKILL)
    active.proc.wait(10)
    took = wait_until(lambda: metric(standby, "gateway_control_plane_leader") == 1, 10)
    assert took < 10
    ctx = fleet.ctx("fluvius", "api")
    path = f"/hes/meters/{fleet.meter_of('fluvius')}"
    status, _ = fleet.admin(standby, "POST", f"/admin/certs/{_serial(fleet, 'fluvius')}/revoke",
                            {"reason": "left", "code": "superseded"})
    assert status == 200
    for proc in fleet.fleet.data:
        wait_until(lambda p=proc: handshake_refused(p.data_port or 0, ctx), 1.0)
        conn = Client(proc.data_port or 0, fleet.ctx("swde", "api"))
        assert conn.get(path).status in (403, 404)  # swde itself is still served
        conn.close()


def test_the_replicas_fail_closed_without_postgresql_and_recover(
        tmp_path: Path) -> None:
    """PostgreSQL stopped: past the staleness bound every replica refuses
    (503 state-stale, /readyz says why); started again, they serve again.
    A cluster of this test's own, so the session's keeps running."""
    cluster = Cluster().start()
    running = RunningFleet(Fleet(
        tenants_dir=REPO / "tenants", certs_dir=tmp_path / "certs", work_dir=tmp_path / "w",
        replicas=2, postgres_url=cluster.database("gateway"),
        fleet_settings="heartbeat_interval_s = 0.2"))
    try:
        running.run(running.fleet.start())
        ctx = running.ctx("ores", "api")
        path = f"/hes/meters/{running.meter_of('ores')}"
        clients = [Client(p.data_port or 0, ctx) for p in running.fleet.data]
        assert [c.get(path).status for c in clients] == [200, 200]
        cluster.stop_server()
        for client, proc in zip(clients, running.fleet.data, strict=True):
            # The default bound is 5 s: refused after it, within a few cycles.
            wait_until(lambda c=client: c.get(path).status == 503, 15, 0.2)
            refused = client.get(path)
            assert refused.status == 503 and refused.json["incident"]  # RFC 9457
            assert refused.headers["retry-after"] == "1"
            status, ready = proc.readiness()
            assert status == 503 and ready["shedding"] == "state-stale"
        cluster.start()
        for client in clients:
            wait_until(lambda c=client: c.get(path).status == 200, 15, 0.2)
            client.close()
    finally:
        running.stop()
        cluster.stop()
