"""The real stack for end-to-end tests: dev PKI from the project's own code,
the four simulators and the gateway over real TLS on 127.0.0.1, every port
picked by the kernel (port 0), running in a background event loop. Tests talk
to it only through sockets, like a partner would."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli import loop_factory
from gateway.core.relations.index import RelationIndex
from gateway.demo._stack import Stack
from gateway.demo.simulators import CONTROL_HEADER
from gateway.tls._policy import client_context

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A partner's HTTPS client with its own certificate (keep-alive)."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port = port
        self.ctx = ctx
        self._conn: http.client.HTTPSConnection | None = None

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Response:
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(HOST, self.port, context=self.ctx,
                                                         timeout=15)
            try:
                self._conn.request(method, path, body=data, headers=hdrs)
                resp = self._conn.getresponse()
                out = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                               resp.read())
                if resp.will_close:
                    self.close()
                return out
            # A keep-alive connection the gateway closed while idle fails on the
            # next write: RST (reset), FIN (broken pipe) or TLS close_notify (EOF).
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ssl.SSLEOFError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


async def _finish_tasks() -> None:
    """What a test left running on the stack's loop is cancelled and awaited,
    and the loop turns a few times so closed transports are released (uvloop
    refuses to close a loop that still has an open handle)."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.05)


class RunningStack:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        # The event loop `gateway serve` runs on by default (uvloop).
        self.loop = loop_factory()()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stack", daemon=True)
        self._clients: dict[tuple[str, str], Client] = {}

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> RunningStack:
        self.thread.start()
        self.run(self.stack.start())
        return self

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        self.run(self.stack.stop())
        self.run(_finish_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    # -- partners ----------------------------------------------------------
    @property
    def port(self) -> int:
        return self.stack.gateway.data_port

    def _name(self, tenant: str, name: str | None) -> str:
        """``api`` where the tenant declares it, else its first principal."""
        if name is not None:
            return name
        principals = self.stack.registry.tenants[tenant].principals
        names = [n for (_, n) in principals]
        return "api" if "api" in names else names[0]

    def context(self, tenant: str, name: str | None = None) -> ssl.SSLContext:
        name = self._name(tenant, name)
        pki = self.stack.pki
        return client_context(pki.ca_cert, pki.client_cert(tenant, name),
                              pki.client_key(tenant, name))

    def client(self, tenant: str, name: str | None = None) -> Client:
        name = self._name(tenant, name)
        key = (tenant, name)
        if key not in self._clients:
            self._clients[key] = Client(self.port, self.context(tenant, name))
        return self._clients[key]

    def raw(self, tenant: str, payload: bytes, name: str | None = None) -> bytes:
        """Send raw bytes over an mTLS connection; return all bytes answered."""
        ctx = self.context(tenant, name)
        with socket.create_connection((HOST, self.port), timeout=10) as sock, \
                ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(payload)
            chunks = []
            try:
                while chunk := tls.recv(65536):
                    chunks.append(chunk)
                    if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                        break
            except (TimeoutError, ConnectionResetError, ssl.SSLError):
                pass
            return b"".join(chunks)

    # -- the simulators and the ops plane ----------------------------------
    def sim(self, name: str, method: str, path: str, body: Any = None) -> Response:
        ctx = client_context(self.stack.pki.ca_cert)
        conn = http.client.HTTPSConnection(HOST, self.stack.sim_ports[name], context=ctx,
                                           timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={
                CONTROL_HEADER: self.stack.control_token, "Content-Type": "application/json"})
            resp = conn.getresponse()
            return Response(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def sim_log(self, name: str) -> list[dict[str, Any]]:
        return list(self.sim(name, "GET", "/_sim/log").json["requests"])

    def clear_sim_logs(self) -> None:
        for name in self.stack.sim_ports:
            assert self.sim(name, "DELETE", "/_sim/log").status == 200

    def fault(self, name: str, mode: str, delay_s: float | None = None) -> None:
        body: dict[str, Any] = {"mode": mode}
        if delay_s is not None:
            body["delay_s"] = delay_s
        assert self.sim(name, "POST", "/_sim/fault", body).status == 200

    def ops(self, path: str) -> Response:
        conn = http.client.HTTPConnection(HOST, self.stack.gateway.ops_port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return Response(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def metric(self, name: str, **labels: str) -> float:
        """Current value of one sample (0 if absent)."""
        text = self.ops("/metrics").body.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def audit_events(self) -> list[dict[str, Any]]:
        path = self.stack.gateway.config.local_dir / "audit.jsonl"
        # The gateway runs on: a line it is writing now may be read in part.
        # Only whole lines (ending in a newline) are events.
        whole = path.read_text().rpartition("\n")[0]
        lines = (json.loads(line) for line in whole.splitlines() if line)
        return [e for e in lines if e.get("type") != "checkpoint"]

    @property
    def relations(self) -> RelationIndex:
        return RelationIndex(self.stack.dataset.relations())


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def start_stack(tmp: Path, **kw: Any) -> RunningStack:
    stack = Stack(tenants_dir=REPO / "tenants", certs_dir=tmp / "certs", work_dir=tmp / "work",
                  **kw)
    return RunningStack(stack).start()


@pytest.fixture(scope="session")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("stack"), upstream_timeout_s=1.0)
    yield running
    running.stop()


@pytest.fixture()
def faults(gw: RunningStack) -> Iterator[RunningStack]:
    """Lets a test flip simulator faults; every simulator is healthy again after."""
    yield gw
    for name in gw.stack.sim_ports:
        gw.fault(name, "none")
