"""What one data-plane request carries through the pipeline, and the pieces
of the pipeline that need no state of their own (body reading, the push
intake's route labels)."""

from __future__ import annotations

import asyncio
import time

from gateway.config import EdgeLimits
from gateway.core.model import Caller
from gateway.core.routes import Route, RouteMatch
from gateway.edge import HttpRequest
from gateway.errors import RequestRefused
from gateway.problem import new_incident_id

DEFAULT_LIMITS = EdgeLimits()

# Refusals that say something about a certificate (D12).
CERTIFICATE_REFUSALS = frozenset({"certificate-revoked", "principal-disabled",
                                  "unknown-principal", "foreign-principal-uri",
                                  "certificate-without-single-uri-san",
                                  # D9: the tenant's contract has not started or has ended
                                  "tenant-contract-not-started", "tenant-contract-ended"})

# The push intakes are not proxied; they have their own route labels.
PUSH_HES = Route("push", "POST", "/push/hes/batches", {})
PUSH_CMH = Route("push", "POST", "/push/cmh/requests", {})
PUSH_ROUTES = {r.template: r for r in (PUSH_HES, PUSH_CMH)}


async def read_body(request: HttpRequest, limit: int, ex: Exchange,
                     timeout_s: float = DEFAULT_LIMITS.body_timeout_s) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise RequestRefused(413, "body-too-large", headers={"Connection": "close"})
    chunks: list[bytes] = []
    size = 0
    clock = asyncio.get_running_loop().time
    try:
        # Each read within timeout_s of the last: one deadline moved along,
        # not a task and a timer per read (asyncio.wait_for's cost in 3.11).
        async with asyncio.timeout(None) as deadline:
            while True:
                deadline.reschedule(clock() + timeout_s)
                try:
                    chunk = await request.content.readany()
                except ConnectionError as exc:
                    # The caller hung up mid-body: nothing is forwarded; the refusal
                    # is audited like any other (its answer reaches nobody).
                    raise RequestRefused(400, "client-gone",
                                         headers={"Connection": "close"}) from exc
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:  # chunked bodies are counted as they arrive
                    raise RequestRefused(413, "body-too-large", headers={"Connection": "close"})
                chunks.append(chunk)
    except TimeoutError as exc:
        # A body that trickles in: refused, the connection closed.
        raise RequestRefused(408, "body-timeout", headers={"Connection": "close"}) from exc
    ex.bytes_in = size
    return b"".join(chunks)


class Exchange:
    """What one request accumulates on its way through the pipeline."""

    __slots__ = ("bytes_in", "caller", "incident", "label", "match", "reason", "resources",
                 "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.incident = new_incident_id()
        # Who is asking, once the resolver knows (None: refused before that).
        self.caller: Caller | None = None
        self.match: RouteMatch | None = None
        self.reason = "ok"
        self.resources: tuple[str, ...] = ()
        self.bytes_in = 0
        self.label: str | None = None

    def resolved(self) -> Caller:
        """The caller, for the stages after *identity* (the pipeline resolves
        it first; a stage that runs earlier is a bug in the pipeline's order)."""
        caller = self.caller
        if caller is None:
            raise RuntimeError("a pipeline stage ran before identity")
        return caller
