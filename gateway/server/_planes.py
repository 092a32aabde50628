"""The listeners of one gateway process, by its role: the data plane (the
lean mTLS server; roles all and data), the admin plane (aiohttp behind the
same edge limits; all and control) and the ops plane (plain HTTP: metrics,
health, readiness, the CRL, the audit keys; every role)."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.admin import (
    audit_routes,
    build_admin_app,
    combine,
    nrn_routes,
    usage_routes,
    vault_routes,
)
from gateway.edge import (
    ConnectionBook,
    DataServer,
    GuardedAppRunner,
    OpenConnections,
    TlsSite,
    admin_refusal,
    bind,
    event_loop_name,
    observe_handshakes,
)
from gateway.edge import self_check as edge_self_check
from gateway.errors import ListenerUnavailable
from gateway.metrics import GatewayMetrics
from gateway.ops import build_ops_app
from gateway.problem import new_incident_id
from gateway.tls import install_read_buffer

if TYPE_CHECKING:
    from gateway.server._gateway import Gateway


async def open_planes(gw: Gateway, data_sock: socket.socket | None,
                      ops_sock: socket.socket | None,
                      admin_sock: socket.socket | None) -> None:
    """Bind (unless handed a socket) and start the listeners of ``gw``'s
    role; a listener that cannot bind closes the ones bound before it."""
    cfg = gw.config
    gw.metrics.event_loop_info.labels(event_loop_name()).set(1)
    bound: list[socket.socket] = []  # closed again if a later one cannot bind
    try:
        if gw.serves_data and data_sock is None:
            # Workers of one host share the data port (SO_REUSEPORT).
            data_sock = bind(cfg.data.host, cfg.data.port, reuse_port=gw.reuse_port,
                             listener="data plane")
            bound.append(data_sock)
        if ops_sock is None:
            ops_sock = bind(cfg.ops.host, cfg.ops.port, listener="ops plane")
            bound.append(ops_sock)
        if gw.serves_admin and admin_sock is None:
            admin_sock = bind(cfg.admin.host, cfg.admin.port, listener="admin plane")
    except ListenerUnavailable:
        for sock in bound:
            sock.close()
        raise
    await gw.upstreams.start(cfg.health_interval_s)
    limits = cfg.limits
    edge_self_check(gw.ssl_context, limits)
    install_read_buffer()  # 32 KiB per TLS connection, not asyncio's 256 KiB
    gw.connections = _book(gw, "data")
    if data_sock is not None:
        server = DataServer(gw.data_plane, limits, gw.connections,
                            http_server=cfg.http_server, access_log=None)
        gw.data_port = await _serve_tls(gw, web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=cfg.drain_timeout_s),
            data_sock, "data")
    ops_runner = web.AppRunner(build_ops_app(
        gw.metrics, gw.upstreams, gw.signer, lambda: True,
        lambda: gw.credentials.crl,
        gw.audit_keys.document, shedding=lambda: _shedding(gw),
        replica=lambda: _replica_status(gw)),
        access_log=None)
    await ops_runner.setup()
    ops_server = ops_runner.server  # plain HTTP: aiohttp's server knows its connections
    assert ops_server is not None
    gw.metrics.connections_open.labels("ops").set_function(
        lambda: len(ops_server.connections))
    await web.SockSite(ops_runner, ops_sock).start()
    gw.ops_runner = ops_runner
    gw.ops_port = ops_sock.getsockname()[1]
    if admin_sock is not None:
        admin_app = build_admin_app(
            gw.credentials, gw.resolver, gw.metrics, rekey=gw.rekeying.run,
            rekey_progress=lambda: gw.rekeying.progress,
            extra=combine(vault_routes(gw.vault, gw.upstream_creds, gw.breakglass,
                                       gw.rekeying.run), usage_routes(gw.usage, gw.store),
                          audit_routes(gw.rotate_audit_key),
                          nrn_routes(gw.store)))
        # The admin plane gets the same edge limits (own connection book).
        gw.admin_port = await _serve_tls(gw, GuardedAppRunner(
            admin_app, access_log=None, edge=limits, shutdown_timeout=cfg.drain_timeout_s,
            book=_book(gw, "admin"), refuse=admin_refusal), admin_sock, "admin")
    # D12: refused handshakes counted, and the SOC told of the ones it must see.
    observe_handshakes(gw.ssl_context, lambda reason: _handshake_failed(gw, reason))


def _book(gw: Gateway, listener: str) -> ConnectionBook:
    """A TLS listener's connection book (the edge limits per tenant), its
    refusals counted under the listener's name."""
    return ConnectionBook(gw.config.limits, gw.config.trust_domain, peers=gw.peers,
                          on_refused=lambda reason: gw.metrics.connections_refused.labels(
                              listener, reason).inc())


async def _serve_tls(gw: Gateway, runner: web.BaseRunner, sock: socket.socket,
                     listener: str) -> int:
    """Start ``runner`` behind the gateway's TLS on ``sock``; its port."""
    await runner.setup()
    await TlsSite(runner, sock, ssl_context=gw.ssl_context,
                  handshake_timeout_s=gw.config.limits.handshake_timeout_s,
                  connections=_count_connections(gw.metrics, listener)).start()
    gw.runners.append(runner)
    port: int = sock.getsockname()[1]
    return port


def _count_connections(metrics: GatewayMetrics, listener: str) -> OpenConnections:
    """The open connections of a TLS listener, as gateway_connections_open
    shows them (read when scraped: nothing on the request path)."""
    connections = OpenConnections()
    metrics.connections_open.labels(listener).set_function(lambda: connections.count)
    return connections


def _shedding(gw: Gateway) -> str | None:
    """Why this replica should get no traffic now (/readyz), or None."""
    if gw.draining:
        return "draining"
    if gw.data_plane.over_memory_budget:
        return "memory"
    if gw.data_plane.state_stale:
        return "state-stale"
    return None


def _replica_status(gw: Gateway) -> dict[str, Any]:
    return {"replica": gw.replica_id, "role": gw.role, "leader": gw.leading,
            "pid": os.getpid()}


def _handshake_failed(gw: Gateway, reason: str) -> None:
    gw.metrics.tls_handshake_failures.labels(reason).inc()
    if reason in ("revoked", "unknown-ca"):
        # D12: a revoked certificate or a foreign CA knocking.
        gw.soc.emit("tls-handshake-refused", "warning", new_incident_id(), reason=reason)
