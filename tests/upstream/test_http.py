"""The upstream connection pool (gateway/upstream/_pool.py) over real sockets on
127.0.0.1 against small servers that send crafted bytes; the parser itself is
in tests/upstream/test_parser.py. No mocks, no clocks: every wait is for an event."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Upstream
from gateway.errors import UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.pki._authority import CertificateAuthority, IssuedCertificate
from gateway.tls._policy import load_chain_from_pem, upstream_context
from gateway.upstream._http import MalformedResponse, NoResponse, ResponseBroken, ResponseTooLarge
from gateway.upstream._pool import ConnectionPool, UpstreamPool

CAP = 1024


# --- the pool over real sockets -------------------------------------------------

RESET, CLOSE, HANG = "reset", "close", "hang"
Step = bytes | str | asyncio.Event


def ok(body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class Scripted:
    """A server on 127.0.0.1 that answers the n-th request it receives (over
    any connection) with the n-th script: bytes to send ("{conn}" becomes the
    connection's number), an event to wait for, RESET, CLOSE or HANG."""

    def __init__(self, *scripts: tuple[Step, ...], tls: ssl.SSLContext | None = None) -> None:
        self.scripts = list(scripts)
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.peers: list[str] = []  # the client certificate's common name, per connection
        self.disconnected = 0
        self.changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    def _event(self) -> None:
        self.changed.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        number = self.connections
        cert = writer.get_extra_info("peercert") or {}
        self.peers.append(next((v for rdn in cert.get("subject", ()) for k, v in rdn
                                if k == "commonName"), ""))
        self._event()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append(head + await reader.readexactly(length))
                self._event()
                for step in self.scripts.pop(0):
                    if isinstance(step, asyncio.Event):
                        await step.wait()
                    elif step == RESET:
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                        writer.transport.abort()
                        return
                    elif step == CLOSE:
                        return
                    elif step == HANG:
                        await asyncio.Event().wait()
                    else:
                        assert isinstance(step, bytes)
                        writer.write(step.replace(b"{conn}", str(number).encode()))
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.disconnected += 1
            self._event()
            self._tasks.discard(task)


def http_pool(server: Scripted, size: int = 4, **kw: float) -> ConnectionPool:
    return ConnectionPool(f"http://127.0.0.1:{server.port}", size=size, connect_timeout_s=5,
                          ssl_context=None, **kw)


async def get(pool: ConnectionPool, method: str = "GET", body: bytes | None = None,
              timeout_s: float = 30) -> tuple[int, bytes]:
    resp = await pool.request(method, "/t", {"Accept": "application/json"}, body,
                              timeout_s=timeout_s, max_body=CAP)
    return resp.status, resp.body


async def test_keep_alive_reuse_and_exact_request_bytes() -> None:
    async with Scripted((ok(b"1"),), (ok(b"2"),), (ok(b"3"),)) as server:
        pool = http_pool(server)
        assert [await get(pool) for _ in range(2)] == [(200, b"1"), (200, b"2")]
        assert await get(pool, "POST", b"{}") == (200, b"3")
        assert server.connections == 1
        host = f"Host: 127.0.0.1:{server.port}\r\n".encode()
        assert server.requests[0] == b"GET /t HTTP/1.1\r\n" + host + \
            b"Accept: application/json\r\n\r\n"  # no User-Agent, no Accept-Encoding
        assert server.requests[2].endswith(b"Content-Length: 2\r\n\r\n{}")
        await pool.close()


async def test_idle_connections_are_reused_newest_first() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    conn = b"X-Conn: {conn}\r\n"
    async with Scripted((first, ok(extra=conn)), (second, ok(extra=conn)),
                        (ok(extra=conn),)) as server:
        pool = http_pool(server)
        a = asyncio.create_task(pool.request("GET", "/a", {}, None, timeout_s=30, max_body=CAP))
        b = asyncio.create_task(pool.request("GET", "/b", {}, None, timeout_s=30, max_body=CAP))
        await server.until(lambda: len(server.requests) == 2)
        first.set()
        await a
        second.set()
        answered_last = dict((await b).headers)["X-Conn"]
        third = await pool.request("GET", "/c", {}, None, timeout_s=30, max_body=CAP)
        assert dict(third.headers)["X-Conn"] == answered_last
        await pool.close()


async def test_callers_beyond_the_pool_size_wait_in_line() -> None:
    async with Scripted(*[(ok(b"%d" % i),) for i in range(5)]) as server:
        pool = http_pool(server, size=1)
        results = await asyncio.gather(*(get(pool) for _ in range(5)))
        assert sorted(body for _, body in results) == [b"0", b"1", b"2", b"3", b"4"]
        assert server.connections == 1
        await pool.close()


async def test_waiting_in_line_is_bounded_by_the_total_timeout() -> None:
    async with Scripted((HANG,)) as server:
        pool = http_pool(server, size=1)
        hung = asyncio.create_task(get(pool, timeout_s=30))
        await server.until(lambda: len(server.requests) == 1)
        with pytest.raises(TimeoutError):
            await get(pool, timeout_s=0.2)
        hung.cancel()
        await asyncio.gather(hung, return_exceptions=True)
        await pool.close()


async def test_an_answer_that_never_comes_times_out_and_its_connection_is_dropped() -> None:
    async with Scripted((HANG,), (ok(b"next"),)) as server:
        pool = http_pool(server, size=1)
        with pytest.raises(TimeoutError):
            await get(pool, timeout_s=0.2)
        assert await get(pool) == (200, b"next")
        assert server.connections == 2  # the connection timed out is never reused
        await pool.close()


async def test_a_kept_connection_times_each_request_by_its_own_deadline() -> None:
    """The connection's timer outlives an answer (it is re-armed only when
    it fires): a later request with a shorter timeout is still timed out at
    its own deadline, and one whose answer comes after an earlier request's
    deadline is not."""
    late = asyncio.Event()
    async with Scripted((ok(b"1"),), (late, ok(b"2")), (ok(b"3"),), (HANG,), (ok(b"4"),),
                        (HANG,)) as server:
        pool = http_pool(server, size=1)
        async with asyncio.timeout(10):
            assert await get(pool, timeout_s=0.2) == (200, b"1")
            second = asyncio.create_task(get(pool, timeout_s=30))
            await asyncio.sleep(0.4)  # past the first request's deadline
            late.set()
            assert await second == (200, b"2")
            assert await get(pool, timeout_s=30) == (200, b"3")  # a timer for 30 s
            with pytest.raises(TimeoutError):
                await get(pool, timeout_s=0.2)  # ... and this one's own, sooner
        assert server.connections == 1
        # The timer of an answered request fires during the next one, before
        # its deadline: re-armed for it, it times it out all the same.
        assert await get(pool, timeout_s=0.2) == (200, b"4")
        hung = asyncio.create_task(get(pool, timeout_s=0.6))
        done, _ = await asyncio.wait({hung}, timeout=5)
        assert done == {hung} and isinstance(hung.exception(), TimeoutError)
        assert server.connections == 2
        await pool.close()


async def test_a_cancelled_caller_frees_its_slot_and_its_connection_is_dropped() -> None:
    async with Scripted((HANG,), (ok(b"after"),)) as server:
        pool = http_pool(server, size=1)
        hung = asyncio.create_task(get(pool))
        await server.until(lambda: len(server.requests) == 1)
        queued = asyncio.create_task(get(pool))  # waits in line for the only slot
        await asyncio.sleep(0)
        queued.cancel()
        hung.cancel()
        await asyncio.gather(hung, queued, return_exceptions=True)
        assert await get(pool) == (200, b"after")  # the slot came back, on a new connection
        assert server.connections == 2
        await pool.close()


async def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    async with Scripted((ok(),), (ok(),)) as server:
        pool = http_pool(server, idle_timeout_s=0.05)
        await get(pool)
        await server.until(lambda: server.disconnected == 1)
        assert pool.open_connections == 0
        await get(pool)
        assert server.connections == 2
        await pool.close()


@pytest.mark.parametrize("answer", [
    ok(extra=b"Connection: close\r\n"),
    b"HTTP/1.1 200 OK\r\n\r\n{}",  # delimited by the close
])
async def test_connection_close_is_honoured(answer: bytes) -> None:
    async with Scripted((answer, CLOSE), (ok(),)) as server:
        pool = http_pool(server)
        assert await get(pool) == (200, b"{}")
        assert await get(pool) == (200, b"{}")
        assert server.connections == 2
        await pool.close()


@pytest.mark.parametrize("method,retried", [("GET", True), ("POST", False)])
async def test_stale_keep_alive_connection(method: str, retried: bool) -> None:
    # The server drops a kept-alive connection just as the next request arrives.
    async with Scripted((ok(),), (CLOSE,), (ok(b"fresh"),)) as server:
        pool = http_pool(server)
        await get(pool)
        if retried:
            assert await get(pool, method) == (200, b"fresh")
            assert server.connections == 2
        else:
            with pytest.raises(NoResponse):
                await get(pool, method, b"{}")  # may have been processed: not repeated
            assert server.connections == 1
        await pool.close()


@pytest.mark.parametrize("script,error", [
    ((RESET,), NoResponse),
    ((CLOSE,), NoResponse),
    ((b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", RESET), ResponseBroken),
    ((b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", CLOSE), ResponseBroken),
    ((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", CLOSE),
     ResponseBroken),
    ((b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 20_000 + b"\r\n\r\n",), MalformedResponse),
    ((b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",), ResponseTooLarge),
])
async def test_failures_are_classified(script: tuple[Step, ...], error: type[Exception]) -> None:
    async with Scripted(script, (ok(b"next"),)) as server:
        pool = http_pool(server)
        with pytest.raises(error):
            await get(pool, "POST", b"{}")
        assert await get(pool) == (200, b"next")  # never on the broken connection
        assert server.connections == 2
        await pool.close()


async def test_an_idle_connection_keeps_nothing_of_its_last_answer() -> None:
    """Between requests a pooled connection holds no reader (with it the last
    answer's body, up to the response cap) and no waiter."""
    async with Scripted((ok(b"x" * 1000),)) as server:
        pool = http_pool(server)
        assert await get(pool) == (200, b"x" * 1000)
        (idle,) = pool._idle
        assert (idle.reader, idle.waiter) == (None, None)
        await pool.close()


async def test_bytes_on_an_idle_connection_close_it() -> None:
    # SECURITY: a forged answer sent ahead of time is never taken for the next one.
    async with Scripted((ok() + ok(b"forged"),), (ok(b"real"),)) as server:
        pool = http_pool(server)
        await get(pool)
        assert await get(pool) == (200, b"real")
        assert server.connections == 2
        await pool.close()


async def test_refused_connection_is_no_response() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        pool = ConnectionPool(f"http://127.0.0.1:{port}", size=1, connect_timeout_s=5,
                              ssl_context=None)
        with pytest.raises(NoResponse):
            await get(pool)
        await pool.close()


# --- TLS, the upstream-mTLS credential, renewal ------------------------------------

@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("upstream test CA")


def tls_server(ca: CertificateAuthority) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf = ca.issue_server(["localhost"], ["127.0.0.1"])
    load_chain_from_pem(ctx, leaf.cert_pem(), leaf.key_pem())
    ctx.verify_mode = ssl.CERT_OPTIONAL  # the gateway's certificate, when it has one
    ctx.load_verify_locations(cadata=ca.cert_pem().decode())
    return ctx


def identity(cert: IssuedCertificate) -> tuple[bytes, bytes]:
    return cert.cert_pem(), cert.key_pem()


async def test_tls_with_client_certificate(ca: CertificateAuthority, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    me = ca.issue_client("spiffe://grid.test/gateway/service/itsm")
    async with Scripted((ok(b"a"),), (ok(b"b"),), tls=tls_server(ca)) as server:
        pool = ConnectionPool(f"https://127.0.0.1:{server.port}", size=2, connect_timeout_s=5,
                              ssl_context=upstream_context(tmp_path / "ca.pem", identity(me)))
        assert [await get(pool), await get(pool)] == [(200, b"a"), (200, b"b")]
        assert server.peers == ["itsm"] and server.connections == 1
        await pool.close()


async def test_tls_server_not_trusted_is_no_response(ca: CertificateAuthority,
                                                     tmp_path: Path) -> None:
    other = CertificateAuthority.create("someone else")
    (tmp_path / "other.pem").write_bytes(other.cert_pem())
    async with Scripted(tls=tls_server(ca)) as server:
        pool = ConnectionPool(f"https://127.0.0.1:{server.port}", size=1, connect_timeout_s=5,
                              ssl_context=upstream_context(tmp_path / "other.pem"))
        with pytest.raises(NoResponse) as info:
            await get(pool)
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
        await pool.close()


async def test_renewal_new_identity_for_new_connections_in_flight_finishes(
        ca: CertificateAuthority, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    old, new = (ca.issue_client(f"spiffe://grid.test/gateway/service/{n}")
                for n in ("old", "new"))
    release = asyncio.Event()
    async with Scripted((ok(),), (release, ok(b"slow")), (ok(b"quick"),),
                        tls=tls_server(ca)) as server:
        current = [old]
        pool = UpstreamPool({"itsm": Upstream("itsm", f"https://127.0.0.1:{server.port}",
                                              tmp_path / "ca.pem")}, GatewayMetrics(),
                            client_identity=lambda name: identity(current[0]))
        await pool.start(health_interval_s=3600)  # the first probe: /healthz
        slow = asyncio.create_task(pool.call("itsm", "GET", "/slow", {}, None))
        await server.until(lambda: len(server.requests) == 2)
        current[0] = new
        renewal = asyncio.create_task(pool.renew_session("itsm", grace_s=0.3))
        await asyncio.sleep(0)  # the renewal has begun: new pool, old one draining
        quick = await pool.call("itsm", "GET", "/quick", {}, None)
        release.set()
        assert ((await slow).body, quick.body) == (b"slow", b"quick")
        await renewal
        await server.until(lambda: server.disconnected == 1)  # the old connection, after the grace
        assert server.peers == ["old", "new"]
        await pool.close()


async def test_pool_maps_failures_and_counts_them() -> None:
    metrics = GatewayMetrics()
    async with Scripted((b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",),
                        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", RESET),
                        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",),
                        (RESET,), (RESET,)) as server:
        pool = UpstreamPool({"hes": Upstream("hes", f"http://127.0.0.1:{server.port}")},
                            metrics)
        pool._pools["hes"] = pool._pool("hes")  # started without the health probe
        reasons = []
        for _ in range(4):
            with pytest.raises(UpstreamFailed) as info:
                await pool.call("hes", "GET", "/x", {}, None)
            reasons.append((info.value.status, info.value.reason))
        assert reasons == [(502, "upstream-response-too-large"), (502, "upstream-reset"),
                           (502, "upstream-malformed-response"), (502, "upstream-unreachable")]

        def count(kind: str) -> float | None:
            return metrics.registry.get_sample_value(
                "gateway_upstream_errors_total", {"upstream": "hes", "kind": kind})
        assert (count("too-large"), count("connection"), count("retried")) == (1, 4, 1)
        await pool.close()
