"""The ops plane: plain HTTP on loopback for the ops team and Prometheus.

``/metrics``, ``/healthz`` (the process is alive), ``/readyz`` (this replica
can serve: config loaded, shared state fresh, not draining, no load shed for
memory; the upstreams' health is in the body and the metrics, but one shared
system down does not take every replica out of the load balancer),
``/.well-known/jwks.json`` (public keys of the identity assertions),
``/.well-known/audit-keys.json`` (the audit checkpoint keys, current first,
then every retired one), ``/crl.pem`` (the CA's signed CRL). Nothing
sensitive is served here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.admin import hide_banner
from gateway.metrics import GatewayMetrics
from gateway.pki import AssertionSigner
from gateway.upstream import UpstreamPool


def build_ops_app(metrics: GatewayMetrics, upstreams: UpstreamPool, signer: AssertionSigner,
                  config_loaded: Callable[[], bool],
                  crl: Callable[[], bytes] = lambda: b"",
                  audit_keys: Callable[[], dict[str, Any]] = lambda: {"keys": []},
                  shedding: Callable[[], str | None] = lambda: None,
                  replica: Callable[[], dict[str, Any]] = lambda: {}) -> web.Application:
    async def metrics_handler(_: web.Request) -> web.Response:
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        loaded = config_loaded()
        # D1 availability: while this replica sheds load (memory, stale
        # shared state, draining), a load balancer sends the traffic to
        # another. An upstream down is down for every replica alike: it is
        # reported, and each request to it fails on its own (502/503).
        shed = shedding()
        ready = loaded and shed is None
        body: dict[str, Any] = {
            "status": "ready" if ready else "not-ready", "config_loaded": loaded,
            "upstreams": {name: ("up" if up else "down")
                          for name, up in sorted(upstreams.up.items())},
            **replica()}
        if shed is not None:
            body["shedding"] = shed
            body["reason"] = f"shedding load: {shed}"
        return web.json_response(body, status=200 if ready else 503)

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(signer.jwks(), headers={"Cache-Control": "max-age=60"})

    async def crl_pem(_: web.Request) -> web.Response:
        # The CA's signed CRL (the active CA's first), refreshed on every change.
        body = crl()
        if not body:
            return web.Response(status=404, text="this gateway runs no CA\n")
        return web.Response(body=body, content_type="application/x-pem-file",
                            headers={"Cache-Control": "no-cache"})

    async def audit_keys_handler(_: web.Request) -> web.Response:
        # Public keys of the audit checkpoints, retired ones included (audit
        # format §6): anyone can verify the log, also across a key rotation.
        return web.json_response(audit_keys(), headers={"Cache-Control": "no-cache"})

    app = web.Application()
    app.on_response_prepare.append(hide_banner)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/crl.pem", crl_pem)
    app.router.add_get("/.well-known/audit-keys.json", audit_keys_handler)
    return app
