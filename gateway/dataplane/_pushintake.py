"""The data plane's push intakes: pushed data in, not proxied (D1, D5).

``POST /push/hes/batches`` (the HES's daily batch) and ``POST
/push/cmh/requests`` (the portal's bookings) take this branch of the
pipeline; where it branches off is written in :mod:`gateway.dataplane._pipeline`. This
stage, in order:

1. the method (POST only);
2. who may push here: only the principals of the intake's own shared
   system (:meth:`gateway.push._service.PushService.authorize`), decided before any
   body byte is read;
3. the content type (JSON);
4. a large-push slot and the body within its form's cap
   (:mod:`gateway.dataplane._pushgate`: one large push cannot take the memory other
   tenants need);
5. routing and enqueueing (:mod:`gateway.push._service`); a Connect My Home booking
   is checked against the trusted relation feed there;
6. the answer: 202 with the accounting of every record, or 429 with
   ``Retry-After`` (back-pressure), its incident id the batch's audit id.

A refusal raises :class:`RequestRefused`; the pipeline answers and audits it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from gateway.config import EdgeLimits
from gateway.core.routes import Route, RouteMatch
from gateway.dataplane._exchange import PUSH_CMH, Exchange
from gateway.dataplane._pushgate import PushGate
from gateway.dataplane._trace import SERVER_HEADER
from gateway.edge import Answer, HttpRequest
from gateway.errors import RequestRefused
from gateway.push import PushService
from gateway.tenants import TenantRegistry

JSON = "application/json"


class PushIntake:
    def __init__(
        self,
        *,
        push: PushService,
        gate: PushGate,
        registry: Callable[[], TenantRegistry],
        limits: EdgeLimits,
        max_body_bytes: int,
    ) -> None:
        self.push = push
        self.gate = gate
        self.registry = registry  # the live tenant registry, replaced on reload
        self.limits = limits
        self.max_body_bytes = max_body_bytes  # push.max_body_bytes

    async def handle(self, request: HttpRequest, ex: Exchange,
                     route: Route) -> Answer:
        """Pushed data in: the HES's daily batch, portal bookings."""
        ex.match = RouteMatch(route, {})
        if request.method != "POST":
            raise RequestRefused(405, "method-not-allowed", headers={"Allow": "POST"})
        # SECURITY: D1. Only the intake's own shared system, decided before any body is read.
        self.push.authorize(ex.resolved(), "cmh" if route is PUSH_CMH else "hes")
        if request.content_type != JSON:
            raise RequestRefused(415, "body-not-json")
        # D1 availability: a bounded number of large pushes, each body capped
        # by its form, so a push cannot take the memory other tenants need.
        async with self.gate.slot(request.content_length):
            raw = await self.gate.read(request, ex, self.max_body_bytes,
                                       self.limits.body_timeout_s,
                                       columnar_allowed=route is not PUSH_CMH)
            if route is PUSH_CMH:
                registry = self.registry()
                kinds = {t.id: t.kind for t in registry}
                coordinators = frozenset(t.id for t in registry
                                         if t.cmh_coordinator)
                status, doc, incident = self.push.intake_cmh(ex.resolved(), raw, kinds,
                                                             coordinators)
            else:
                status, doc, incident = await asyncio.to_thread(self.push.intake, ex.resolved(),
                                                                raw)
            del raw  # freed before the heap is trimmed
        ex.incident = incident  # the audit event of the batch has this id too
        ex.reason = "push-accepted" if status == 202 else "push-back-pressure"
        headers = {"Server": SERVER_HEADER, "X-Request-Id": incident}
        if status == 429:
            headers["Retry-After"] = "30"
        return Answer(status=status, body=json.dumps(doc).encode(), content_type=JSON,
                            headers=headers)
