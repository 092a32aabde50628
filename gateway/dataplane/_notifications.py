"""``GET /notifications``: a tenant reads its own breach notifications on
the data plane (D1, D12; the documents of :mod:`gateway.core.breach`), and
its tenant lockbox notices (D7: ``lockbox-request``, ``lockbox-emergency``,
:mod:`gateway.vault`'s ``Lockbox``).

Not proxied: after *hygiene* the pipeline branches off here (like the push
intakes). In order:

1. the method (GET only, else 405), no body;
2. who: any principal of the tenant, except a customer portal, which
   reads nothing in its own name (D4);
3. the query: ``limit`` only (1 to 100, default 100);
4. the answer: ``{"tenant", "notifications": [...]}``, the caller's
   tenant's own notifications only, newest first; 503 where no push outbox
   is configured (nothing is recorded there).
"""

from __future__ import annotations

import asyncio
import json

from gateway.core.canary import CANARY_ROLE
from gateway.core.occupancy import CUSTOMER_PORTAL_ROLE
from gateway.core.paths import Target
from gateway.core.routes import Route, RouteMatch
from gateway.dataplane._exchange import Exchange
from gateway.dataplane._trace import SERVER_HEADER
from gateway.edge import Answer, HttpRequest
from gateway.errors import RequestRefused
from gateway.push import NOTIFICATIONS_MAX, PushService

NOTIFICATIONS = Route("notifications", "GET", "/notifications", {})
JSON = "application/json"


class NotificationsRead:
    def __init__(self, *, push: PushService | None) -> None:
        self.push = push  # the outbox holds the notifications

    async def handle(self, request: HttpRequest, target: Target,
                     ex: Exchange) -> Answer:
        ex.match = RouteMatch(NOTIFICATIONS, {})
        if request.method != "GET":
            raise RequestRefused(405, "method-not-allowed", headers={"Allow": "GET"})
        if request.body_exists:
            raise RequestRefused(400, "body-not-allowed")
        caller = ex.resolved()
        if CUSTOMER_PORTAL_ROLE in caller.principal.roles:
            raise RequestRefused(403, "not-a-customer-route")  # D4: nothing in its own name
        if CANARY_ROLE in caller.principal.roles:
            raise RequestRefused(403, "canary-principal-not-a-canary")  # D1: canaries only
        query = target.query_map
        if set(query) - {"limit"}:
            raise RequestRefused(400, "query-parameter-unknown")
        limit = NOTIFICATIONS_MAX
        if "limit" in query:
            raw = query["limit"]
            if not raw.isdigit() or not 1 <= int(raw) <= NOTIFICATIONS_MAX:
                raise RequestRefused(400, "limit-invalid")
            limit = int(raw)
        if self.push is None:
            raise RequestRefused(503, "notifications-unavailable")
        # SECURITY: D1. The caller's own tenant only, from its certificate.
        tenant = caller.tenant_id
        found = await asyncio.to_thread(self.push.notifications, tenant, limit)
        ex.reason = "notifications-read"
        body = json.dumps({"tenant": tenant, "notifications": found}).encode()
        return Answer(status=200, body=body, content_type=JSON, headers={
            "Server": SERVER_HEADER, "X-Request-Id": ex.incident, "Cache-Control": "no-store"})
