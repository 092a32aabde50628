"""One small receiving endpoint per operator for pushed data.

``POST /receivers/{tenant}/readings`` accepts a part only from the gateway:
the TLS client certificate must chain to the dev CA and carry the gateway's
push identity (URI SAN). Parts are recorded by their ``Idempotency-Key`` so a
redelivery is counted, not stored twice. Control endpoints (``/_sim/...``,
control token) read what arrived and switch a receiver down, slow or poison.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.core.identity import uri_sans
from gateway.demo.simulators._common import CONTROL_HEADER

MODES = frozenset({"up", "down", "slow", "poison"})


@dataclass
class Receiver:
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)  # idempotency key -> part
    redeliveries: int = 0
    mode: str = "up"


@dataclass
class ReceiverState:
    gateway_uri: str
    control_token: str
    receivers: dict[str, Receiver] = field(default_factory=lambda: defaultdict(Receiver))


STATE = web.AppKey("receivers", ReceiverState)


def _control(request: web.Request) -> None:
    token = request.headers.get(CONTROL_HEADER, "")
    if not hmac.compare_digest(token.encode(), request.app[STATE].control_token.encode()):
        raise web.HTTPForbidden(text="control token required")


async def receive(request: web.Request) -> web.Response:
    state = request.app[STATE]
    transport = request.transport
    peercert = transport.get_extra_info("peercert") if transport else None
    # SECURITY: only the gateway delivers: its certificate, its identity.
    if not peercert or uri_sans(peercert) != [state.gateway_uri]:
        return web.json_response({"error": "not-the-gateway"}, status=403)
    receiver = state.receivers[request.match_info["tenant"]]
    if receiver.mode == "down":
        return web.json_response({"error": "down"}, status=503)
    if receiver.mode == "slow":
        await asyncio.sleep(0.5)
    if receiver.mode == "poison":
        return web.json_response({"error": "cannot-process"}, status=422)
    key = request.headers.get("Idempotency-Key")
    if not key:
        return web.json_response({"error": "idempotency-key-required"}, status=400)
    doc = await request.json()
    if key in receiver.parts:
        receiver.redeliveries += 1
    else:
        receiver.parts[key] = doc
    return web.json_response({"ack": key})


async def received(request: web.Request) -> web.Response:
    _control(request)
    r = request.app[STATE].receivers[request.match_info["tenant"]]
    return web.json_response({"parts": r.parts, "redeliveries": r.redeliveries, "mode": r.mode})


async def set_mode(request: web.Request) -> web.Response:
    _control(request)
    doc = await request.json()
    if doc.get("mode") not in MODES:
        return web.json_response({"error": "bad-mode"}, status=400)
    request.app[STATE].receivers[request.match_info["tenant"]].mode = doc["mode"]
    return web.json_response({"mode": doc["mode"]})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_receivers(gateway_uri: str, control_token: str) -> web.Application:
    app = web.Application(client_max_size=512 * 1024 * 1024)
    app[STATE] = ReceiverState(gateway_uri, control_token)
    app.router.add_post("/receivers/{tenant}/readings", receive)
    app.router.add_get("/_sim/received/{tenant}", received)
    app.router.add_post("/_sim/receivers/{tenant}/mode", set_mode)
    app.router.add_get("/healthz", healthz)
    return app
