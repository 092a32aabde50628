"""``/lockbox``: a tenant answers for its own data on the data plane (D7).

A privileged account that reaches the tenant (``[lockbox.reach]``) was asked
for on the admin plane: the tenant was told (``GET /notifications``,
``lockbox-request`` or ``lockbox-emergency``) and, with ``lockbox =
"approve"`` in its tenant file, one of its ``lockbox-approver`` principals
consents before the account is checked out. Not proxied: after *hygiene* the
pipeline branches off here (like ``GET /notifications``).

================================  =============================================
``GET /lockbox``                  the caller's tenant's cases, newest first
``POST /lockbox/{case}/approve``  consent (a lockbox-approver, within the limit)
``POST /lockbox/{case}/deny``     refuse: the checkout is refused for good
``POST /lockbox/{case}/review``   review a consent an emergency skipped
================================  =============================================

The tenant answering is always the caller's own, from its certificate: a
principal of a tenant the case does not reach gets 403 whether or not the
case exists (D1). A POST body is optional: ``{"reason": "..."}``
(``application/json``, at most 4 KiB).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from gateway.core.occupancy import CUSTOMER_PORTAL_ROLE
from gateway.core.paths import Target
from gateway.core.routes import Route, RouteMatch
from gateway.dataplane._exchange import Exchange, read_body
from gateway.dataplane._trace import SERVER_HEADER
from gateway.edge import Answer, HttpRequest
from gateway.errors import RequestRefused
from gateway.state import record_json
from gateway.vault import Lockbox

PREFIX = "/lockbox"
LOCKBOX_LIST = Route("lockbox", "GET", PREFIX, {})
LOCKBOX_STEP = Route("lockbox", "POST", PREFIX + "/{case}/{step}", {})
STEPS = frozenset({"approve", "deny", "review"})
_CASE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
MAX_BODY = 4096
MAX_REASON = 1000
JSON = "application/json"


def is_lockbox(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class LockboxRoutes:
    def __init__(self, *, lockbox: Lockbox | None) -> None:
        self.lockbox = lockbox

    async def handle(self, request: HttpRequest, target: Target,
                     ex: Exchange) -> Answer:
        parts = target.path[len(PREFIX):].split("/")
        if parts == [""]:
            ex.match = RouteMatch(LOCKBOX_LIST, {})
            if request.method != "GET":
                raise RequestRefused(405, "method-not-allowed", headers={"Allow": "GET"})
            return await self._list(request, target, ex)
        if len(parts) != 3 or parts[0] != "" or not _CASE.fullmatch(parts[1]) \
                or parts[2] not in STEPS:
            raise RequestRefused(404, "no-route")
        ex.match = RouteMatch(LOCKBOX_STEP, {"case": parts[1], "step": parts[2]})
        if request.method != "POST":
            raise RequestRefused(405, "method-not-allowed", headers={"Allow": "POST"})
        return await self._step(request, target, ex, parts[1], parts[2])

    def _who(self, ex: Exchange) -> Lockbox:
        caller = ex.resolved()
        if CUSTOMER_PORTAL_ROLE in caller.principal.roles:
            raise RequestRefused(403, "not-a-customer-route")  # D4: nothing in its own name
        if self.lockbox is None:
            raise RequestRefused(503, "lockbox-unavailable")
        return self.lockbox

    async def _list(self, request: HttpRequest, target: Target, ex: Exchange) -> Answer:
        if request.body_exists:
            raise RequestRefused(400, "body-not-allowed")
        if target.query_map:
            raise RequestRefused(400, "query-parameter-unknown")
        lockbox = self._who(ex)
        # SECURITY: D1. The caller's own tenant only, from its certificate.
        tenant = ex.resolved().tenant_id
        entries = await asyncio.to_thread(lockbox.entries_of, tenant)
        ex.reason = "lockbox-read"
        return self._answer(ex, {"tenant": tenant, "cases": [record_json(e) for e in entries]})

    async def _step(self, request: HttpRequest, target: Target, ex: Exchange, case: str,
                    step: str) -> Answer:
        if target.query_map:
            raise RequestRefused(400, "query-parameter-unknown")
        lockbox = self._who(ex)
        raw = await read_body(request, MAX_BODY, ex) if request.body_exists else b""
        if raw and request.content_type != JSON:
            raise RequestRefused(415, "body-not-json")  # as on every data-plane route
        reason = _reason(raw)
        actor = ex.resolved().principal
        ex.resources = (case,)
        # A refusal (LockboxRefused) is a RequestRefused: its problem names why.
        if step == "review":
            entry = await asyncio.to_thread(lockbox.review, actor, case, reason)
        else:
            entry = await asyncio.to_thread(lockbox.decide, actor, case, step == "approve",
                                            reason)
        ex.reason = f"lockbox-{step}"
        return self._answer(ex, record_json(entry))

    @staticmethod
    def _answer(ex: Exchange, doc: Any) -> Answer:
        return Answer(status=200, body=json.dumps(doc).encode(), content_type=JSON,
                            headers={"Server": SERVER_HEADER, "X-Request-Id": ex.incident,
                                     "Cache-Control": "no-store"})


def _reason(raw: bytes) -> str:
    """The optional ``{"reason": "..."}`` of a POST body."""
    if not raw.strip():
        return ""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise RequestRefused(400, "body-malformed-json") from exc
    if not isinstance(doc, dict) or set(doc) - {"reason"}:
        raise RequestRefused(400, "field-invalid", detail="the body is {\"reason\": \"...\"}")
    reason = doc.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise RequestRefused(400, "field-invalid",
                             detail=f"reason: a string of at most {MAX_REASON} characters")
    return reason
