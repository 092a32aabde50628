"""One host, many cores, as the outside sees it: ``gateway serve --workers N``
(N processes on one data port, SO_REUSEPORT, each a replica of the fleet
with its own ops port) and ``gateway demo --replicas N`` (the fleet on a
local PostgreSQL, described in fleet.json)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.demo import Stack, StackPorts, _ports, spare_port
from gateway.tls import client_context
from tests.postgres import Cluster

from .conftest import REPO, Client, RunningStack
from .test_cli import GATEWAY, Running


def _port_pair() -> int:
    """A free port whose successor is free too (the second worker's ops port)."""
    for _ in range(50):
        port = spare_port()
        if _ports._bindable("127.0.0.1", port + 1):
            return port
    raise AssertionError("no two adjacent free ports")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _ready(ops_port: int) -> dict[str, Any] | None:
    status, body = _get(f"http://127.0.0.1:{ops_port}/readyz")
    return json.loads(body) if status == 200 else None


def _wait(check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s")


def _requests_answered(ops_port: int) -> float:
    _, text = _get(f"http://127.0.0.1:{ops_port}/metrics")
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("gateway_requests_total{"))


def test_serve_with_workers_shares_the_data_port_and_restarts_a_dead_worker(
        tmp_path: Path, postgres: Cluster) -> None:
    # The simulators fetch the assertion keys from the first worker's ops port.
    ops = _port_pair()
    state = postgres.new_database()  # the vault the workers open is there too
    running = RunningStack(Stack(tenants_dir=REPO / "tenants", certs_dir=tmp_path / "certs",
                                 work_dir=tmp_path / "work", run_gateway=False,
                                 ports=StackPorts(ops=ops), state_url=state))
    running.start()
    try:
        config = running.stack.config_path.read_text()
        config += (f'\n[state]\nurl = "{state}"\n\n[fleet]\n'
                   'replica_id = "host1"\nheartbeat_interval_s = 0.2\n')
        path = tmp_path / "gateway.toml"
        path.write_text(config)
        data_port = running.stack.gateway_ports[0]
        proc = Running([*GATEWAY, "serve", "--config", str(path), "--workers", "2"], tmp_path)
        try:
            try:
                first = _wait(lambda: _ready(ops), 25)
                second = _wait(lambda: _ready(ops + 1), 25)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; output:\n{''.join(proc.lines[-40:])}") from None
            assert (first["replica"], first["role"]) == ("host1-w0", "all")
            assert (second["replica"], second["role"]) == ("host1-w1", "data")
            pki = running.stack.pki
            ctx = client_context(pki.ca_cert, pki.client_cert("ores", "api"),
                                 pki.client_key("ores", "api"))
            # New connections: the kernel spreads them over the workers (by a
            # hash of the connection, so bounded in count and time, not exact).
            deadline, sent = time.monotonic() + 30, 0
            while sent < 400 and time.monotonic() < deadline and not (
                    _requests_answered(ops) > 0 and _requests_answered(ops + 1) > 0):
                for _ in range(20):
                    client = Client(data_port, ctx)
                    assert client.get("/hes/meters").status == 200
                    client.close()
                sent += 20
            assert _requests_answered(ops) > 0 and _requests_answered(ops + 1) > 0, sent
            # Both workers count each other (a heartbeat within 3 intervals;
            # on a loaded machine one may be late for a moment).
            _wait(lambda: "gateway_replicas_live 2.0" in _get(
                f"http://127.0.0.1:{ops}/metrics")[1], 10)
            # `gateway serve` runs on uvloop by default ([gateway] event_loop).
            assert 'gateway_event_loop_info{loop="uvloop"} 1.0' in _get(
                f"http://127.0.0.1:{ops}/metrics")[1]
            # A worker killed is started again by the supervisor.
            pid = int(_wait(lambda: _worker_pid(ops + 1), 10))
            subprocess.run(["kill", "-9", str(pid)], check=True)
            _wait(lambda: _worker_pid(ops + 1) not in (None, pid), 30)
            assert (tmp_path / "work" / "replicas" / "host1-w1" / "audit.jsonl").exists()
        finally:
            code = proc.stop()
        assert code == 0, "".join(proc.lines)
        assert _get(f"http://127.0.0.1:{ops}/healthz")[0] == 0  # every worker is gone
    finally:
        running.stop()


def _worker_pid(ops_port: int) -> int | None:
    ready = _ready(ops_port)
    return None if ready is None else int(ready["pid"])


def test_serve_refuses_workers_without_shared_state(tmp_path: Path) -> None:
    from gateway.demo._stack import write_config

    config = tmp_path / "gateway.toml"
    write_config(config, pki=_dev_pki(tmp_path), tenants_dir=REPO / "tenants",
                 relations=tmp_path / "r.json", data_dir=tmp_path / "data", data_port=0,
                 ops_port=0, admin_port=0, sim_ports={"hes": 1, "clearing": 1, "cmh": 1,
                                                       "itsm": 1})
    out = subprocess.run([*GATEWAY, "serve", "--config", str(config), "--workers", "2"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "--workers 2: workers are replicas of a fleet" in out.stderr
    assert 'set [state] url = "postgresql://..."' in out.stderr


def _dev_pki(tmp_path: Path) -> Any:
    from gateway.demo import ensure_dev_pki
    from gateway.tenants import load_tenants

    return ensure_dev_pki(tmp_path / "certs", load_tenants(REPO / "tenants"),
                          "shared-grid.test")


def test_demo_replicas_runs_a_fleet_on_its_own_postgresql(tmp_path: Path) -> None:
    # The cluster runs as the postgres user when we are root: its directory's
    # parents must be searchable (pytest's tmp_path is not; var/demo is).
    top = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    top.chmod(0o711)
    try:
        work = top / "work"
        proc = Running([*GATEWAY, "demo", "--replicas", "2", "--ephemeral-ports", "--work",
                        str(work), "--certs", str(tmp_path / "certs")], REPO)
        try:
            proc.wait_for(r"fleet is running", timeout=120)
            doc = json.loads((work / "fleet.json").read_text())
            assert doc["postgres"] == f"postgresql://gateway@/gateway?host={work / 'postgres'}"
            assert set(doc) >= {"postgres", "admin", "replicas"}
            assert [r["id"] for r in doc["replicas"]] == ["data-0", "data-1"]
            assert all(set(r) >= {"id", "pid", "data", "ops"} for r in doc["replicas"])
            assert json.dumps(doc, indent=1) in "".join(proc.lines)  # printed as well
            ctx = client_context(tmp_path / "certs" / "ca.pem",
                                 tmp_path / "certs" / "ores" / "api.pem",
                                 tmp_path / "certs" / "ores" / "api.key")
            for replica in doc["replicas"]:
                client = Client(int(replica["data"].rsplit(":", 1)[1]), ctx)
                assert client.get("/hes/meters").status == 200
                client.close()
        finally:
            code = proc.stop()
        assert code == 0, "".join(proc.lines[-30:])
        assert not (work / "postgres" / "data" / "postmaster.pid").exists()  # stopped with it
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_data_replica_started_before_the_control_plane_exits_75(
        tmp_path: Path, postgres: Cluster) -> None:
    """It only reads the vault's data keys, which the control plane makes: it
    stops with EX_TEMPFAIL (75) and says why; its supervisor starts it again."""
    from gateway.demo._fleet import _without_table

    state = postgres.new_database()
    running = RunningStack(Stack(tenants_dir=REPO / "tenants", certs_dir=tmp_path / "certs",
                                 work_dir=tmp_path / "work", run_gateway=False,
                                 state_url=state))
    running.start()
    try:
        config = _without_table(running.stack.config_path.read_text(), "ca")
        config += f'\n[state]\nurl = "{state}"\n\n[fleet]\nrole = "data"\n'
        path = tmp_path / "data.toml"
        path.write_text(config)
        out = subprocess.run([*GATEWAY, "serve", "--config", str(path)], capture_output=True,
                             text=True, timeout=60, check=False)
    finally:
        running.stop()
    assert out.returncode == 75, out.stderr[-2000:]
    assert "not ready yet" in out.stderr and "the control plane makes" in out.stderr


def test_serve_with_workers_exits_2_on_a_busy_data_port(tmp_path: Path,
                                                        postgres: Cluster) -> None:
    """The worker names the listener and the address; the supervisor stops
    the others and exits 2 too (starting it again cannot help)."""
    state = postgres.new_database()
    running = RunningStack(Stack(tenants_dir=REPO / "tenants", certs_dir=tmp_path / "certs",
                                 work_dir=tmp_path / "work", run_gateway=False,
                                 state_url=state))
    running.start()
    try:
        data_port = running.stack.gateway_ports[0]
        path = tmp_path / "gateway.toml"
        path.write_text(running.stack.config_path.read_text() + f'\n[state]\nurl = "{state}"\n')
        with socket.socket() as holder:  # another program, without SO_REUSEPORT
            holder.bind(("127.0.0.1", data_port))
            holder.listen()
            out = subprocess.run([*GATEWAY, "serve", "--config", str(path), "--workers", "2"],
                                 capture_output=True, text=True, timeout=120, check=False)
    finally:
        running.stop()
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"gateway: data plane: cannot listen on 127.0.0.1:{data_port}: address in use" \
        in out.stderr
    assert "Traceback" not in out.stderr
