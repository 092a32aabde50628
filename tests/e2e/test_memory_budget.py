"""Memory under connections: the gateway's RSS is bounded by
its configured budget. Two mechanisms, each tested over real mTLS sockets:

- a TLS connection costs ~70 KiB, not asyncio's 256 KiB read buffer plus
  state (gateway/tls/_buffers.py), measured on a `gateway serve` process of its
  own holding 1,000 keep-alive connections;
- over the budget, a new connection is closed before any HTTP byte
  (counted in gateway_connections_refused_total{reason="memory-budget"}).
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.demo._stack import Stack

from .conftest import REPO, Client, RunningStack, start_stack

BUDGET_MB = 400
CONNECTIONS = 1000
# asyncio's default is ~297 KiB per idle TLS connection on this Python
# (bench/README.md); with the gateway's 32 KiB read buffer it is ~70.
PER_CONNECTION_CEILING = 150 * 1024


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_over_the_budget_new_connections_are_closed_before_http(tmp_path: Path) -> None:
    gw = start_stack(tmp_path, limits="memory_budget_mb = 1\n")  # this process is far above
    try:
        answer = gw.raw("ores", b"GET /itsm/tickets HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert answer == b""  # closed: no HTTP byte, nothing forwarded
        assert gw.sim_log("itsm") == []
        assert gw.metric("gateway_connections_refused_total", listener="data",
                         reason="memory-budget") >= 1
    finally:
        gw.stop()


def test_rss_stays_within_the_budget_with_1000_connections(tmp_path: Path) -> None:
    stack = RunningStack(Stack(
        tenants_dir=REPO / "tenants", certs_dir=tmp_path / "certs", work_dir=tmp_path / "work",
        run_gateway=False, limits=f"memory_budget_mb = {BUDGET_MB}\n"
                                  "max_connections_per_tenant = 2000\n"
                                  "keepalive_timeout_s = 120\n")).start()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config",
                             str(stack.stack.config_path)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = stack.stack.gateway_ports[0]
    clients: list[Client] = []
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded wait for the gateway to serve
            probe = Client(port, stack.context("ores"))
            try:
                if probe.get("/itsm/tickets").status == 200:
                    break
            except (OSError, http.client.HTTPException):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
            finally:
                probe.close()
        before = rss_of(proc.pid)
        contexts = [stack.context(t) for t in ("ores", "fluvius", "sibelga", "resa")]
        for i in range(CONNECTIONS):
            client = Client(port, contexts[i % len(contexts)])
            clients.append(client)
            assert client.get("/itsm/tickets").status == 200  # then idle, kept alive
        after = rss_of(proc.pid)
        per_connection = (after - before) / CONNECTIONS
        assert after <= BUDGET_MB * 1024 * 1024, after
        assert per_connection < PER_CONNECTION_CEILING, per_connection
        # Every one of them is still open and usable: nothing was shed.
        for client in clients[::100]:
            assert client.get("/itsm/tickets").status == 200
    finally:
        for client in clients:
            client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        stack.stop()
