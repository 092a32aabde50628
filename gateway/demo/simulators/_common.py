"""Machinery every simulated shared system shares (DESIGN.md §8).

One middleware does, in this order, for every request but ``/healthz`` and
the ``/_sim/`` control endpoints: log it, verify the gateway's assertion
(a shared system must refuse anything that did not come through the
gateway), then apply the fault switch. Handlers only ever see verified
claims. The control plane lets tests read the request log (to prove the
gateway never let a request through) and flip faults (to prove the gateway
catches what an upstream gets wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from aiohttp import web

from gateway.clock import utc_now
from gateway.core.relations.index import parse_instant
from gateway.demo.simulators._secrets import SECRETS
from gateway.pki import ASSERTION_HEADER, InvalidAssertion, KeySource, verify_assertion

CONTROL_HEADER = "X-Sim-Control"
FAULT_MODES = frozenset({"none", "misroute", "slow", "error", "reset", "bigheader"})
DEFAULT_DELAY_S = 5.0
# Bounded so a benchmark run cannot grow a simulator without limit; far more
# than any test sends between two reads of the log.
LOG_LIMIT = 100_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Record = dict[str, Any]


class SimError(Exception):
    """An error answer (JSON body) raised from a handler."""

    def __init__(self, status: int, error: str, detail: str | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.body: dict[str, Any] = {"error": error}
        if detail is not None:
            self.body["detail"] = detail


@dataclass
class Fault:
    mode: str = "none"
    delay_s: float = DEFAULT_DELAY_S

    def as_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "delay_s": self.delay_s}


@dataclass
class SimState:
    """Per-app mutable state (no module globals: two apps never share it)."""

    name: str
    keys: KeySource
    control_token: str
    fault: Fault = field(default_factory=Fault)
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_LIMIT))
    # Injectable so a test can pin "now"; the simulators otherwise use the wall clock.
    clock: Callable[[], datetime] = field(default=utc_now)


STATE = web.AppKey("sim_state", SimState)
CLAIMS = web.RequestKey("sim_claims", dict[str, Any])


# -- helpers for handlers ----------------------------------------------------


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def claims_of(request: web.Request) -> dict[str, Any]:
    return request[CLAIMS]


def tenant_of(request: web.Request) -> str:
    return str(request[CLAIMS]["tenant"])


def tenant_kind_of(request: web.Request) -> str:
    return str(request[CLAIMS].get("tenant_kind", ""))


def now_of(request: web.Request) -> datetime:
    return request.app[STATE].clock()


def misrouting(request: web.Request) -> bool:
    return request.app[STATE].fault.mode == "misroute"


def valid_at(rec: Record, at: datetime) -> bool:
    """True when ``[valid_from, valid_to)`` of ``rec`` contains ``at`` (None = open)."""
    start = parse_instant(rec.get("valid_from"))
    end = parse_instant(rec.get("valid_to"))
    return (start is None or start <= at) and (end is None or at < end)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_day(request: web.Request, name: str) -> date:
    """A required ``YYYY-MM-DD`` query parameter, else a 400."""
    raw = request.query.get(name)
    if raw is None:
        raise SimError(400, "bad-request", f"missing query parameter {name!r}")
    # date.fromisoformat also takes "20261126" and week dates: be strict.
    if not _DATE.fullmatch(raw):
        raise SimError(400, "bad-request", f"{name!r} must be YYYY-MM-DD")
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise SimError(400, "bad-request", f"{name!r}: {exc}") from exc


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, else a 400."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise SimError(400, "bad-request", "body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise SimError(400, "bad-request", "body must be a JSON object")
    return body


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from the parts (demo values, stable across runs)."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def other(records: list[Record], keep: Callable[[Record], bool]) -> Record | None:
    """The first record ``keep`` accepts: what a misrouting upstream hands out."""
    return next((r for r in records if keep(r)), None)


# -- control plane -------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _get_log(request: web.Request) -> web.Response:
    return json_response({"requests": list(request.app[STATE].log)})


async def _clear_log(request: web.Request) -> web.Response:
    request.app[STATE].log.clear()
    return json_response({"requests": []})


async def _get_fault(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].fault.as_json())


async def _set_fault(request: web.Request) -> web.Response:
    body = await json_body(request)
    mode = body.get("mode")
    if mode not in FAULT_MODES:
        raise SimError(400, "bad-request", f"mode must be one of {', '.join(sorted(FAULT_MODES))}")
    delay = body.get("delay_s", DEFAULT_DELAY_S)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 600:
        raise SimError(400, "bad-request", "delay_s must be a number of seconds in [0, 600]")
    fault = Fault(str(mode), float(delay))
    request.app[STATE].fault = fault
    return json_response(fault.as_json())


# -- the middleware ------------------------------------------------------------


def _reset(request: web.Request) -> web.Response:
    """Drop the connection without an answer.

    SO_LINGER 0 turns the close into a TCP RST, like a crashing upstream or a
    middlebox; the client sees a reset (or a disconnect), never a response.
    The returned response is never sent: aiohttp's write to the closed
    transport raises ConnectionError, which it swallows quietly.
    """
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)


@web.middleware
async def _sim_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        if request.path == "/healthz" or request.path.startswith("/_admin/"):
            # /_admin/ authenticates with the service credential or an
            # account password itself (see _secrets.py).
            return await handler(request)
        if request.path == "/_sim" or request.path.startswith("/_sim/"):
            token = request.headers.get(CONTROL_HEADER, "")
            if not hmac.compare_digest(token.encode(), state.control_token.encode()):
                raise SimError(403, "forbidden", f"missing or wrong {CONTROL_HEADER}")
            return await handler(request)

        # Log first, so a request refused below still shows up in the log.
        entry: dict[str, Any] = {"method": request.method, "path": request.path,
                                 "query": request.rel_url.raw_query_string, "tenant": None,
                                 "accepted": False,
                                 # Names only: tests prove which headers crossed the gateway.
                                 "headers": sorted({h.lower() for h in request.headers})}
        state.log.append(entry)
        try:
            claims = await verify_assertion(request.headers.get(ASSERTION_HEADER),
                                            state.keys, audience=state.name)
        except InvalidAssertion as exc:
            return json_response({"error": "invalid-assertion", "detail": str(exc)}, 401)
        secrets = request.app.get(SECRETS)
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        if secrets is not None and not secrets.request_ok(request.headers, peercert):
            # Through the gateway, but without the service credential it injects.
            return json_response({"error": "invalid-credential"}, 401)
        entry["tenant"] = claims["tenant"]
        entry["accepted"] = True
        request[CLAIMS] = claims

        fault = state.fault
        if fault.mode == "slow":
            await asyncio.sleep(fault.delay_s)
        elif fault.mode == "error":
            return json_response({"error": "simulated failure"}, 500)
        elif fault.mode == "bigheader":
            # An upstream answering with a header over any sane limit.
            response = await handler(request)
            response.headers["X-Padding"] = "x" * 20_000
            return response
        elif fault.mode == "reset":
            return _reset(request)
        return await handler(request)
    except SimError as exc:
        return json_response(exc.body, exc.status)
    except web.HTTPException as exc:
        # Router misses (404, 405) and the like: JSON like every other answer.
        if exc.status < 400:
            raise
        error = exc.reason.lower().replace(" ", "-")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.json_response({"error": error}, status=exc.status, headers=headers)


def new_app(name: str, keys: KeySource, control_token: str) -> web.Application:
    """An app with the shared middleware, health check and control routes."""
    if not control_token:
        raise ValueError("control_token must not be empty")
    app = web.Application(middlewares=[_sim_middleware])
    app[STATE] = SimState(name, keys, control_token)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/_sim/log", _get_log)
    app.router.add_delete("/_sim/log", _clear_log)
    app.router.add_get("/_sim/fault", _get_fault)
    app.router.add_post("/_sim/fault", _set_fault)
    return app
