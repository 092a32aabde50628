"""Edge limits and HTTP framing over real sockets.
Each test would fail if its protection were removed."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.edge._limits import ConnectionBook, EdgeLimits, self_check
from gateway.edge._listeners import GuardedServer, TlsSite, bind
from gateway.errors import ConfigError
from gateway.tls._policy import server_context

from .conftest import HOST, RunningStack, start_stack

SHORT = """header_timeout_s = 1
body_timeout_s = 1
handshake_timeout_s = 1
keepalive_timeout_s = 1.5
max_connections_per_tenant = 3
"""


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("edge"), limits=SHORT)
    yield gw
    gw.stop()


def _tls(gw: RunningStack, tenant: str = "ores", name: str = "api") -> ssl.SSLSocket:
    sock = socket.create_connection((HOST, gw.port), timeout=10)
    return gw.context(tenant, name).wrap_socket(sock, server_hostname="localhost")


def _exchange(gw: RunningStack, payload: bytes, tenant: str = "ores",
              name: str = "api") -> bytes:
    with _tls(gw, tenant, name) as tls:
        tls.sendall(payload)
        return _read_all(tls)


def _read_all(tls: ssl.SSLSocket, timeout: float = 10) -> bytes:
    tls.settimeout(timeout)
    out = b""
    try:
        while chunk := tls.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError, ssl.SSLError):
        pass
    return out


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0


def _meter(gw: RunningStack, tenant: str = "ores") -> str:
    return next(m["serial"] for m in gw.stack.dataset.meters
                if m["owners"][-1]["tenant"] == tenant and not m["airplane_mode"])


def _get(path: str, extra: bytes = b"") -> bytes:
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n" + extra +
            b"Connection: close\r\n\r\n")


@pytest.mark.parametrize("case,status", [
    ("request-line", 414), ("one-header", 431), ("header-count", 431), ("header-block", 431),
])
def test_header_limits(edge: RunningStack, case: str, status: int) -> None:
    meter = _meter(edge)
    payload = {
        "request-line": _get("/hes/meters/" + "a" * 9000),
        "one-header": _get(f"/hes/meters/{meter}", b"X-Big: " + b"a" * 9000 + b"\r\n"),
        "header-count": _get(f"/hes/meters/{meter}",
                             b"".join(b"X-H%d: a\r\n" % i for i in range(101))),
        "header-block": _get(f"/hes/meters/{meter}",
                             b"".join(b"X-B%d: %s\r\n" % (i, b"a" * 8000) for i in range(9))),
    }[case]
    edge.clear_sim_logs()
    raw = _exchange(edge, payload)
    assert _status(raw) == status, raw[:200]
    assert b"application/problem+json" in raw
    assert edge.sim_log("hes") == []


def _problem(raw: bytes) -> dict[str, object]:
    doc = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("count", [100, 101, 110, 150, 500, 5000])
def test_every_header_count_over_the_limit_is_431(edge: RunningStack, count: int) -> None:
    """RFC 6585 §5: the limit is 100 header lines (the Host line included);
    whatever the count over it, the answer is the documented 431 (aiohttp's
    own parser would say 400 from 129 on), audited under its incident id."""
    meter = _meter(edge)
    extra = b"".join(b"X-H%d: a\r\n" % i for i in range(count - 2))  # + Host, Connection
    edge.clear_sim_logs()
    raw = _exchange(edge, _get(f"/hes/meters/{meter}", extra))
    if count <= 100:
        assert _status(raw) == 200, raw[:200]
        return
    assert _status(raw) == 431, raw[:200]
    problem = _problem(raw)
    assert problem["status"] == 431 and str(problem["type"]).endswith(":headers-too-large")
    events = [e for e in edge.audit_events() if e.get("incident") == problem["incident"]]
    assert [(e["status"], e["reason"]) for e in events] == [(431, "too-many-headers")]
    assert edge.sim_log("hes") == []


def test_chunked_body_over_the_route_cap_is_413(edge: RunningStack) -> None:
    path = f"/hes/meters/{_meter(edge)}/operations"
    chunk = b"a" * 4096
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    edge.clear_sim_logs()
    raw = _exchange(edge, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
                    name="field-ops")
    assert _status(raw) == 413
    assert edge.sim_log("hes") == []


def test_slowloris_is_cut_off_at_the_header_deadline(edge: RunningStack) -> None:
    with _tls(edge) as tls:
        started = time.monotonic()
        tls.sendall(b"GET /hes/meters HTTP/1.1\r\nHost: x\r\n")  # ...and never the end
        try:
            for _ in range(20):
                time.sleep(0.2)
                tls.sendall(b"X-Slow: 1\r\n")
        except OSError:
            pass
        assert _read_all(tls, timeout=5) == b""  # closed, no answer
        assert time.monotonic() - started < 4


def test_silent_connection_is_closed(edge: RunningStack) -> None:
    with _tls(edge) as tls:
        started = time.monotonic()
        assert _read_all(tls, timeout=5) == b""
        assert time.monotonic() - started < 4


def test_body_that_trickles_is_408(edge: RunningStack) -> None:
    path = f"/hes/meters/{_meter(edge)}/operations"
    with _tls(edge, name="field-ops") as tls:
        tls.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"op")
        raw = _read_all(tls, timeout=6)
    assert _status(raw) == 408


def test_tls_handshake_deadline(edge: RunningStack) -> None:
    with socket.create_connection((HOST, edge.port), timeout=10) as sock:
        started = time.monotonic()
        sock.settimeout(6)
        assert sock.recv(1024) == b""  # no ClientHello: closed by the server
        assert time.monotonic() - started < 4


def test_idle_keep_alive_is_closed(edge: RunningStack) -> None:
    with _tls(edge) as tls:
        tls.sendall(b"GET /itsm/tickets HTTP/1.1\r\nHost: x\r\n\r\n")
        tls.settimeout(5)
        first = tls.recv(65536)
        assert _status(first) == 200
        started = time.monotonic()
        rest = _read_all(tls, timeout=6)
        assert rest == b"" or _status(rest) == 0
        assert time.monotonic() - started < 5


def test_connections_per_tenant_are_capped(edge: RunningStack) -> None:
    held = [_tls(edge, "sibelga") for _ in range(3)]
    try:
        for tls in held:  # a request each, so the server has admitted them
            tls.sendall(b"GET /itsm/tickets HTTP/1.1\r\nHost: x\r\n\r\n")
            tls.settimeout(5)
            assert _status(tls.recv(65536)) == 200
        fourth = _exchange(edge, _get("/itsm/tickets"), "sibelga")
        assert fourth == b""  # closed before any HTTP byte
        assert _status(_exchange(edge, _get("/itsm/tickets"), "resa")) == 200  # others fine
    finally:
        for tls in held:
            tls.close()


SMUGGLING = {
    "cl-te": b"POST {op} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-cl": b"POST {op} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
    "te-te": b"POST {op} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
             b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "dup-cl": b"POST {op} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
              b"Content-Length: 3\r\n\r\n{{}}",
    "signed-cl": b"POST {op} HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{{}}",
    "te-obfuscated": b"POST {op} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "te-space-colon": b"POST {op} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
    "http10-te": b"POST {op} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
    "obs-fold": b"GET {m} HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "bare-lf": b"GET {m} HTTP/1.1\nHost: x\n\n",
    "bare-cr": b"GET {m} HTTP/1.1\r\nHost: x\rX-Y: z\r\n\r\n",
    "nul": b"GET {m} HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "space-before-colon": b"GET {m} HTTP/1.1\r\nHost : x\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_ambiguous_framing_is_400_and_closed(edge: RunningStack, case: str) -> None:
    meter = _meter(edge)
    payload = SMUGGLING[case].replace(b"{op}", f"/hes/meters/{meter}/operations".encode()) \
        .replace(b"{m}", f"/hes/meters/{meter}".encode()).replace(b"{{}}", b"{}")
    edge.clear_sim_logs()
    with _tls(edge, name="field-ops") as tls:
        tls.sendall(payload + b"GET /itsm/tickets HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = _read_all(tls, timeout=5)
    assert _status(raw) == 400, raw[:300]
    assert raw.count(b"HTTP/1.") == 1  # closed: the smuggled second request is never read
    for name in edge.stack.sim_ports:
        assert edge.sim_log(name) == [], name


def test_pipelined_requests_are_judged_one_by_one(edge: RunningStack) -> None:
    own, foreign = _meter(edge, "ores"), _meter(edge, "fluvius")
    raw = _exchange(edge, b"GET /hes/meters/" + own.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
                    + _get(f"/hes/meters/{foreign}"))
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
    assert statuses == [200, 403]


def test_upgrade_is_not_passed_through(edge: RunningStack) -> None:
    edge.clear_sim_logs()
    raw = _exchange(edge, _get("/itsm/tickets", b"Upgrade: h2c\r\nHTTP2-Settings: AAAA\r\n"))
    assert _status(raw) == 200 and b"101" not in raw.split(b"\r\n")[0]
    (entry,) = edge.sim_log("itsm")
    assert "upgrade" not in entry["headers"] and "http2-settings" not in entry["headers"]


def test_oversized_upstream_header_is_502(edge: RunningStack) -> None:
    edge.fault("itsm", "bigheader")
    try:
        raw = _exchange(edge, _get("/itsm/tickets"))
    finally:
        edge.fault("itsm", "none")
    assert _status(raw) == 502 and b"xxxxxxxx" not in raw


def test_self_check_refuses_a_listener_without_client_auth(tmp_path: Path) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ConfigError, match="client certificates"):
        self_check(ctx, EdgeLimits())
    ctx.verify_mode = ssl.CERT_REQUIRED
    with pytest.raises(ConfigError, match="trust bundle is empty"):
        self_check(ctx, EdgeLimits())


def test_noisy_neighbour_is_rate_limited_others_are_not(edge: RunningStack) -> None:
    from gateway.core.quota import Quota

    plane = edge.stack.gateway.data_plane
    plane.quotas.set("proximus", Quota(rate_per_s=2, burst=3))
    try:
        noisy = [edge.client("proximus").get("/cmh/requests") for _ in range(8)]
        quiet = [edge.client("orange").get("/cmh/requests") for _ in range(8)]
    finally:
        plane.load_quotas()
    limited = [r for r in noisy if r.status == 429]
    assert limited and all(r.headers["retry-after"].isdigit() for r in limited)
    assert limited[0].json["incident"]
    assert {r.status for r in quiet} == {200}  # the neighbour sees no error


def test_tenant_quota_is_declared_in_its_file(tmp_path: Path) -> None:
    from gateway.tenants import load_tenants

    (tmp_path / "acme.toml").write_text(
        'id = "acme"\nname = "A"\nkind = "dso"\n[quota]\nrate_per_s = 5\nburst = 10\n'
        'concurrency = 2\n[[principals]]\nkind = "service"\nname = "api"\n')
    quota = load_tenants(tmp_path).tenants["acme"].quota
    assert (quota.rate_per_s, quota.burst, quota.concurrency) == (5.0, 10, 2)  # type: ignore[attr-defined]


def test_admin_plane_has_the_same_edge_limits(edge: RunningStack) -> None:
    port = edge.stack.gateway.admin_port
    ctx = edge.context("ores", "alice")
    with socket.create_connection((HOST, port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        started = time.monotonic()
        tls.sendall(b"GET /admin/certs HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert _read_all(tls, timeout=5) == b""
        assert time.monotonic() - started < 4  # cut at the header deadline (1 s here)
    with socket.create_connection((HOST, port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"GET /admin/certs HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n")
        raw = _read_all(tls)
    assert _status(raw) == 400 and b"application/problem+json" in raw
    assert b"aiohttp" not in raw


# Where a failing request is logged: aiohttp's server, asyncio's loop and the
# planes' own loggers (background maintenance logs elsewhere, on its own).
_REQUEST_LOGGERS = ("aiohttp", "asyncio", "gateway.dataplane", "gateway.admin", "gateway.push")


def _request_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.ERROR
            and any(r.name == n or r.name.startswith(n + ".") for n in _REQUEST_LOGGERS)]


def _hang_up_mid_body(port: int, ctx: ssl.SSLContext, target: str,
                      declared: int = 100_000) -> None:
    """Headers declaring a body (within the route's limit), 10 bytes of it,
    then the socket closed."""
    with socket.create_connection((HOST, port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                    f"\r\nContent-Length: {declared}\r\n\r\n".encode() + b'{"reason":')
        time.sleep(0.2)


def test_a_client_gone_mid_body_is_closed_quietly(edge: RunningStack,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A caller that sends part of a declared body and hangs up: the
    connection is closed and accounted without an error in the log (the
    handler's error path used to assert on its already-released server)."""
    meter = _meter(edge)
    for route in (f"/hes/meters/{meter}/operations", "/push/hes/batches"):
        who = ("ores", "field-ops") if "operations" in route else ("hes-operator", "pusher")
        with caplog.at_level("WARNING"):
            _hang_up_mid_body(edge.port, edge.context(*who), route,
                              100_000 if "push" in route else 10_000)
            time.sleep(0.8)
        assert _request_errors(caplog) == []
        caplog.clear()
    # Audited as a refusal, nothing forwarded; the listener still serves.
    gone = [e for e in edge.audit_events() if e.get("reason") == "client-gone"]
    assert {e["route"] for e in gone} >= {"/hes/meters/{serial}/operations",
                                          "/push/hes/batches"}, gone
    assert edge.client("ores").get("/hes/meters").status == 200


def test_an_admin_gone_mid_body_is_a_refusal_not_a_failure(
        edge: RunningStack, caplog: pytest.LogCaptureFixture) -> None:
    """D10 on the admin plane: an admin whose connection drops mid-body is
    audited as a refused attempt (``client-gone``), not as a 500 with an
    error and a traceback in the log; nothing is done."""
    before = len(edge.stack.gateway.credentials.store.certificates())
    with caplog.at_level("WARNING"):
        _hang_up_mid_body(edge.stack.gateway.admin_port, edge.context("ores", "alice"),
                          "/admin/certs", 10_000)
        deadline = time.monotonic() + 5
        while not [e for e in edge.audit_events() if e.get("detail") == "client-gone"]:
            assert time.monotonic() < deadline, "no audit event for the hang-up"
            time.sleep(0.05)
    (event,) = [e for e in edge.audit_events() if e.get("detail") == "client-gone"]
    assert (event["event"], event["actor"], event["action"], event["outcome"]) == (
        "admin", "ores/person/alice", "certs-issue", "refused")
    assert _request_errors(caplog) == []
    assert len(edge.stack.gateway.credentials.store.certificates()) == before


def test_the_listener_survives_a_handler_failing_after_the_caller_left(
        edge: RunningStack, caplog: pytest.LogCaptureFixture) -> None:
    """The listener's own error path, under any handler: one that fails because
    its caller hung up mid-body is answered through the listener's refusal
    (so it is audited), its connection is released from the connection book,
    and nothing is logged as an error. aiohttp drops the connection handler's
    reference to its server at connection_lost, before that error path runs."""
    pki = edge.stack.pki
    limits = EdgeLimits()
    book = ConnectionBook(limits, edge.stack.trust_domain)
    refused: list[tuple[int, str]] = []
    crashes: list[dict[str, Any]] = []

    def refuse(request: web.BaseRequest, status: int, reason: str) -> web.StreamResponse:
        refused.append((status, reason))
        return web.Response(status=status)

    async def reads_the_body(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=await request.read())  # the caller leaves meanwhile

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: crashes.append(ctx))
        server = GuardedServer(reads_the_body, **limits.server_kwargs(), access_log=None)
        server.guard(limits, book, refuse, lambda: None)
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        sock = bind(HOST, 0)
        try:
            await TlsSite(runner, sock, handshake_timeout_s=5, ssl_context=server_context(
                pki.server_cert, pki.server_key, pki.ca_cert)).start()
            port = sock.getsockname()[1]
            ctx = edge.context("ores", "api")
            await asyncio.to_thread(_hang_up_mid_body, port, ctx, "/anything")
            for _ in range(100):
                if refused and book.total == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            await runner.cleanup()

    with caplog.at_level("WARNING"):
        asyncio.run(scenario())
    assert refused == [(400, "client-gone")]
    assert (book.total, dict(book.per_tenant)) == (0, {})
    assert _request_errors(caplog) == [] and crashes == []
