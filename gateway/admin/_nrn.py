"""Admin-plane routes of national-register lookup approvals (D8): a person of
the employer asks (``reader``), a manager of the same team approves or denies
(``manager``), managers and auditors read their tenant's requests."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.admin._request import CALLER, Body, Guard, RouteSet, _text
from gateway.clock import utc_now
from gateway.core.decide import check_purpose
from gateway.core.identifiers import is_valid_nrn
from gateway.core.nrn import (
    APPROVAL_TTL,
    MANAGER_ROLE,
    approval_refusal,
    principal_name,
    request_refusal,
)
from gateway.pki import AdminRefused
from gateway.state import NrnApproval, StateStore, record_json

REQUESTERS = frozenset({"reader"})
READERS = frozenset({MANAGER_ROLE, "auditor", "reader"})


def nrn_routes(store: StateStore,
               clock: Callable[[], datetime] = utc_now) -> RouteSet:
    def register(r: web.UrlDispatcher, guarded: Guard) -> None:
        def target(request: web.Request) -> str:
            return request.match_info.get("id", request.path)

        async def ask(request: web.Request, doc: Body) -> Any:
            caller = request[CALLER]
            refused = request_refusal(caller)
            if refused is not None:
                raise AdminRefused(refused[0], refused[1], "a national-register lookup is "
                                   "asked by a person of the employer with a team")
            nrn = _text(doc, "nrn")
            if not is_valid_nrn(nrn):
                raise AdminRefused(400, "field-invalid", "nrn: not a national register number")
            purpose, justification = doc.get("purpose"), doc.get("justification")
            bad = check_purpose(purpose if isinstance(purpose, str) else None,
                                justification if isinstance(justification, str) else None)
            if bad is not None:
                raise AdminRefused(400, bad.reason, "purpose: one of the declared purposes; "
                                   "justification: a case reference")
            now = clock()
            approval = NrnApproval(
                id="nrn-" + secrets.token_hex(8), tenant=caller.tenant.id,
                requester=principal_name(caller.principal),
                requester_team=str(caller.principal.team), nrn=nrn, purpose=str(purpose),
                justification=str(justification), created=now,
                expires_at=now + APPROVAL_TTL)
            store.add_nrn_approval(approval)
            return record_json(approval)

        def decide(status: str) -> Callable[[web.Request, Body], Any]:
            async def handler(request: web.Request, doc: Body) -> Any:
                caller = request[CALLER]
                approval = store.nrn_approval(request.match_info["id"])
                if approval is None:
                    raise AdminRefused(404, "unknown-approval", "no such request")
                now = clock()
                refused = approval_refusal(caller, approval, now)
                if refused is not None:
                    raise AdminRefused(refused[0], refused[1], "not approvable by this caller")
                if not store.decide_nrn_approval(approval.id, status,
                                                 principal_name(caller.principal), now):
                    raise AdminRefused(409, "approval-already-decided", "decided meanwhile")
                decided = store.nrn_approval(approval.id)
                assert decided is not None
                return record_json(decided)
            return handler

        async def listing(request: web.Request, doc: Body) -> Any:
            # Each tenant's requests are its own (D1), for its managers and auditors.
            tenant = request[CALLER].tenant.id
            return {"approvals": [record_json(a) for a in store.nrn_approvals(tenant=tenant)]}

        r.add_post("/admin/nrn-approvals",
                   guarded("nrn-approval-request", REQUESTERS, target, ask))
        r.add_get("/admin/nrn-approvals",
                  guarded("nrn-approval-list", READERS, target, listing, write=False))
        r.add_post("/admin/nrn-approvals/{id}/approve",
                   guarded("nrn-approval-approve", frozenset({MANAGER_ROLE}), target,
                           decide("approved")))
        r.add_post("/admin/nrn-approvals/{id}/deny",
                   guarded("nrn-approval-deny", frozenset({MANAGER_ROLE}), target,
                           decide("denied")))
    return register
