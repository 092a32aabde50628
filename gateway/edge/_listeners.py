"""The listeners: sockets, TLS sites with a handshake deadline, and the
servers whose connections get the edge limits (gateway.edge._limits): the
data plane's on the lean HTTP server (gateway.edge._lean) or on aiohttp's
(``[gateway] http_server``), the admin plane's on aiohttp's."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.config import DEFAULT_HTTP_SERVER, HTTP_SERVERS, EdgeLimits
from gateway.edge._answer import Answer
from gateway.edge._handshakes import report as report_handshake_failure
from gateway.edge._lean import LeanConnection, incident_of
from gateway.edge._limits import ConnectionBook
from gateway.edge._request import HttpRequest
from gateway.errors import ListenerUnavailable
from gateway.problem import CONTENT_TYPE, new_incident_id, own_slug_for, problem_body

# What aiohttp's parsers (C and Python) say when a request has more header
# lines than max_headers; no exception class of its own to tell it apart.
_TOO_MANY_HEADERS = "Too many headers"


def admin_refusal(request: HttpRequest, status: int, reason: str) -> web.StreamResponse:
    """What the admin plane's HTTP layer refuses: a problem document too."""
    # The gateway's own refusal: its type follows the status, never a shared system's.
    return web.Response(status=status, content_type=CONTENT_TYPE, headers={"Server": "gateway"},
                        body=problem_body(status, new_incident_id(), own_slug_for(status), None))


# What a person can do about a listener that cannot bind, said in a few words.
_BIND_ERRORS = {errno.EADDRINUSE: "address in use", errno.EACCES: "permission denied",
                errno.EADDRNOTAVAIL: "address not available on this host"}


def bind(host: str, port: int, *, reuse_port: bool = False,
         listener: str = "listener") -> socket.socket:
    """A listening socket (port 0 picks a free one; the caller reads it back).
    ``reuse_port``: several processes listen on the same port and the kernel
    spreads the connections among them (``serve --workers N``). An address
    that cannot be bound is a :class:`ListenerUnavailable` naming the
    ``listener`` and the address (``gateway serve`` exits 2 with that line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock: socket.socket | None = None
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        if sock is not None:
            sock.close()
        why = _BIND_ERRORS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()
        address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise ListenerUnavailable(f"{listener}: cannot listen on {address}: {why}") from exc
    sock.setblocking(False)
    return sock


class _ProblemRequestHandler(RequestHandler):
    """The data plane's connection handler, around aiohttp's.

    - What aiohttp's HTTP parser rejects (unknown methods, malformed framing,
      over-long lines) and unhandled exceptions become problem documents with
      an incident id, audited like every other refusal; the connection closes.
    - Edge limits aiohttp lacks: a header-read deadline (slowloris) armed at
      connect and at the first byte of every next request, and caps on open
      connections per listener and per tenant.
    """

    _gw_waiting = False  # for request headers, under the header deadline
    _gw_busy = False
    _gw_tenant = ""
    _gw_admitted = False

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        # Kept here: aiohttp drops its own reference at connection_lost, and
        # the error path may still run after that (a caller gone mid-body).
        self._gw = manager

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        book = self._gw.book
        self._gw_tenant = book.tenant_of(transport)
        self._gw_admitted = book.admit(self._gw_tenant)
        super().connection_made(transport)
        if not self._gw_admitted:
            # SECURITY: over the connection cap: closed before any HTTP byte.
            transport.close()
            return
        self._gw_arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._gw_disarm()
        if self._gw_admitted:
            self._gw.book.release(self._gw_tenant)
            self._gw_admitted = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._gw_admitted:
            return  # SECURITY: refused at connect: nothing it sent is parsed
        if not self._gw_busy and not self._gw_waiting:
            self._gw_arm()  # the first byte of a next request: headers must follow in time
        super().data_received(data)

    def _gw_arm(self) -> None:
        self._gw_waiting = True
        self._gw.wait_for_headers(self)

    def _gw_disarm(self) -> None:
        if self._gw_waiting:
            self._gw_waiting = False
            self._gw.got_headers(self)

    def gw_header_timeout(self) -> None:
        """Called by the server's sweep once the deadline has passed."""
        self._gw_waiting = False
        if not self._gw_busy and self.transport is not None:
            self._gw.on_header_timeout()
            self.transport.abort()

    def gw_request_started(self) -> None:
        self._gw_busy = True
        self._gw_disarm()

    def gw_request_done(self) -> None:
        self._gw_busy = False

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, BadHttpMethod):
            status, reason = 501, "method-unknown"
        elif isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            if limit == self._gw.edge.max_url_bytes:
                status, reason = 414, "request-line-too-long"
            else:
                status, reason = 431, "header-too-long"
        elif isinstance(exc, BadHttpMessage) and _TOO_MANY_HEADERS in str(exc.message):
            # RFC 6585 §5: over the parser's own count (EdgeLimits.server_kwargs:
            # just above max_headers, which the pipeline checks exactly), so any
            # count over the limit is the documented 431, never a 400.
            status, reason = 431, "too-many-headers"
        elif isinstance(exc, ConnectionError):
            # The caller hung up (mid-body, say) and the handler failed on it:
            # nothing is wrong with the gateway and nobody reads the answer, so
            # no error is logged; the refusal is still accounted and audited.
            status, reason = 400, "client-gone"
        elif status >= 500:
            reason = "internal-error"
        else:
            reason = "http-parse-error"
        refused = self._gw.refuse(request, status, reason)
        resp = refused.to_web() if isinstance(refused, Answer) else refused
        resp.force_close()
        if reason == "internal-error":
            self.log_exception("error handling request", exc_info=exc, extra=incident_of(resp))
        return resp


class _Deadlined(Protocol):
    """A connection under the header deadline (or the lean server's idle one)."""

    def gw_header_timeout(self) -> None:
        """The deadline has passed."""


class GuardedServer(web.Server):
    """An aiohttp server whose connections get the edge limits above; its
    refusals come from ``refuse`` (a problem document, audited)."""

    edge: EdgeLimits
    book: ConnectionBook
    refuse: Callable[[HttpRequest, int, str], web.StreamResponse | Answer]
    on_header_timeout: Callable[[], None]

    def guard(self, edge: EdgeLimits, book: ConnectionBook,
              refuse: Callable[[HttpRequest, int, str], web.StreamResponse | Answer],
              on_header_timeout: Callable[[], None]) -> None:
        self.edge, self.book = edge, book
        self.refuse, self.on_header_timeout = refuse, on_header_timeout
        # The header deadline: one sweep for all connections instead of a
        # timer armed and cancelled per request (it showed in the profile).
        # A connection is cut between the deadline and one sweep period later.
        self._waiting: dict[_Deadlined, float] = {}
        self._sweep_s = min(0.25, edge.header_timeout_s / 4)
        self._sweeper: asyncio.TimerHandle | None = None

    def wait_for_headers(self, handler: _Deadlined, within_s: float | None = None) -> None:
        """Call ``handler.gw_header_timeout()`` once ``within_s`` (default:
        the header deadline) has passed, unless ``got_headers`` comes first."""
        loop = self._loop  # not get_running_loop(): on 3.11 it costs a getpid()
        self._waiting[handler] = loop.time() + (
            self.edge.header_timeout_s if within_s is None else within_s)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_s, self._sweep)

    def got_headers(self, handler: _Deadlined) -> None:
        self._waiting.pop(handler, None)

    def _sweep(self) -> None:
        loop = self._loop
        now = loop.time()
        expired = [h for h, deadline in self._waiting.items() if deadline <= now]
        for handler in expired:
            del self._waiting[handler]
            handler.gw_header_timeout()
        self._sweeper = loop.call_later(self._sweep_s, self._sweep) if self._waiting else None

    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


@web.middleware
async def headers_arrived(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                          ) -> web.StreamResponse:
    """For an application served by :class:`GuardedAppRunner` (the admin
    plane): its connections' header deadline is met while a request runs."""
    connection = request.protocol
    if not isinstance(connection, _ProblemRequestHandler):
        return await handler(request)  # not behind a guarded server (a test app)
    connection.gw_request_started()
    try:
        return await handler(request)
    finally:
        connection.gw_request_done()


class DataHandler(Protocol):
    """What a data listener serves: the data plane, as the edge sees it."""

    async def handle(self, request: HttpRequest) -> Answer:
        """Answer one request that passed the edge limits."""

    def refuse_unparsed(self, request: HttpRequest, status: int, reason: str) -> Answer:
        """A problem document for what the HTTP layer could not parse or handle."""

    def header_timed_out(self) -> None:
        """Account a connection cut at the header deadline (slowloris)."""


class DataServer(GuardedServer):
    """The data plane's server (no router: the pipeline routes itself). Its
    connections speak HTTP through the lean server (``http_server="lean"``,
    gateway.edge._lean) or aiohttp's request handler (``"aiohttp"``); either
    way under the same edge limits, with the same refusals."""

    def __init__(self, plane: DataHandler, edge: EdgeLimits, book: ConnectionBook, *,
                 http_server: str = DEFAULT_HTTP_SERVER, **kwargs: Any) -> None:
        if http_server not in HTTP_SERVERS:
            raise ValueError(f"http_server must be one of {HTTP_SERVERS}, not {http_server!r}")
        super().__init__(self._serve, **edge.server_kwargs(), **kwargs)
        self.plane = plane
        self.http_server = http_server
        self.loop = self._loop
        self._lean: set[LeanConnection] = set()
        self.guard(edge, book, plane.refuse_unparsed, plane.header_timed_out)

    def __call__(self) -> RequestHandler | LeanConnection:  # type: ignore[override]
        # A protocol factory for the listener (TlsSite takes any protocol).
        if self.http_server == "lean":
            return LeanConnection(self)
        return super().__call__()

    def lean_opened(self, connection: LeanConnection) -> None:
        self._lean.add(connection)

    def lean_closed(self, connection: LeanConnection) -> None:
        self._lean.discard(connection)

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for connection in list(self._lean):
            connection.close()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's)
        await asyncio.gather(super().shutdown(timeout),
                             *(c.shutdown(timeout) for c in list(self._lean)))
        self._lean.clear()

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        # Every request of this server comes through a connection of ours.
        connection = request.protocol
        assert isinstance(connection, _ProblemRequestHandler)
        connection.gw_request_started()  # the header deadline is met
        try:
            return (await self.plane.handle(request)).to_web()
        finally:
            connection.gw_request_done()


class GuardedAppRunner(web.AppRunner):
    """An AppRunner (the admin plane) whose server gets the same edge limits."""

    def __init__(self, app: web.Application, *, edge: EdgeLimits, book: ConnectionBook,
                 refuse: Callable[[HttpRequest, int, str], web.StreamResponse],
                 **kwargs: Any) -> None:
        super().__init__(app, **edge.server_kwargs(), **kwargs)
        self._guard = (edge, book, refuse)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = GuardedServer  # same server, guarded connections
        assert isinstance(server, GuardedServer)
        server.guard(*self._guard, lambda: None)
        return server


class OpenConnections:
    """The connections open on one listener, from accept to close (those in
    their TLS handshake too), counted by the listener's TLS protocol: the
    same on the lean and on aiohttp's HTTP server, and nothing per request.
    ``gateway_connections_open`` reads ``count`` when scraped."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class TlsSite(web.SockSite):
    """A listening socket with a TLS handshake deadline (aiohttp's SockSite
    leaves asyncio's 60 s default) whose failed handshakes are counted, and
    its open connections (``connections``)."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *,
                 ssl_context: ssl.SSLContext, handshake_timeout_s: float,
                 connections: OpenConnections | None = None) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # TCP keep-alive probes find a peer gone without a FIN. Set on the
            # listener: each accepted socket inherits it (Linux copies the
            # listener's options), so no connection pays a system call for it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._handshake_timeout_s = handshake_timeout_s
        self.connections = connections or OpenConnections()

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        ctx = self._ssl_context
        assert ctx is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            _tls_factory(loop, server, ctx, self._handshake_timeout_s, self.connections),
            sock=self._sock, backlog=self._backlog)


def _tls_factory(loop: asyncio.AbstractEventLoop, handler: Callable[[], asyncio.BaseProtocol],
                 context: ssl.SSLContext, timeout_s: float, connections: OpenConnections,
                 ) -> Callable[[], asyncio.BaseProtocol]:
    """Protocols for a TLS listener: the event loop's own TLS protocol (the
    one ``create_server(ssl=...)`` would build: asyncio's or uvloop's) around
    the HTTP handler, with a handshake waiter of ours. The loop's server
    keeps a failed handshake to itself; our waiter gets its OpenSSL error, so
    it is counted by reason (gateway.edge._handshakes) on either loop.

    (Not ``loop.start_tls`` on an accepted plain connection: uvloop starts
    reading as soon as ``connection_made`` returns, before ``start_tls`` can
    take the transport, and a ClientHello that arrives in between is lost.)
    """
    tls_protocol = _counted(_tls_protocol_class(loop))

    def reported(waiter: asyncio.Future[None]) -> None:
        if not waiter.cancelled() and (exc := waiter.exception()) is not None:
            report_handshake_failure(context, exc)

    def build() -> asyncio.BaseProtocol:
        waiter: asyncio.Future[None] = loop.create_future()
        waiter.add_done_callback(reported)
        protocol = tls_protocol(loop, handler(), context, waiter, server_side=True,
                                ssl_handshake_timeout=timeout_s)
        protocol.gw_connections = connections
        return cast(asyncio.BaseProtocol, protocol)

    return build


_COUNTED: dict[type[Any], type[Any]] = {}


def _counted(base: type[Any]) -> type[Any]:
    """``base`` (the loop's TLS protocol) counting its connections in the
    :class:`OpenConnections` set on it as ``gw_connections``: the transport
    calls ``connection_made`` once at accept and ``connection_lost`` once at
    close, whatever became of the handshake."""
    counted = _COUNTED.get(base)
    if counted is None:
        def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
            self.gw_connections.count += 1
            base.connection_made(self, transport)

        def connection_lost(self: Any, exc: BaseException | None) -> None:
            self.gw_connections.count -= 1
            base.connection_lost(self, exc)

        counted = _COUNTED[base] = type(f"Counted{base.__name__}", (base,), {
            "connection_made": connection_made, "connection_lost": connection_lost})
    return counted


def event_loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """"uvloop" or "asyncio": what runs ``loop`` (default: the running one)."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def _tls_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    """The TLS protocol class the running loop uses for its own servers."""
    if event_loop_name(loop) == "uvloop":
        import uvloop.loop

        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]  # not in its stubs
    import asyncio.sslproto

    return asyncio.sslproto.SSLProtocol
