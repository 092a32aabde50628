"""Dual control on the admin plane (D6, D7): pending actions and their approval.

An action that :func:`gateway.core.duties.ruling` puts under the two-person
rule is not done when asked: it becomes a *pending action* in the state store
(it survives restarts, expires after ``ttl``, 24 h by default) and the caller
gets 202 with its id. A second security admin, not the requester, not of the
requester's team, approves it; only then does it run, with exactly the
parameters the requester gave (the CSR, the overlap, ...). The approver gets
the outcome (e.g. the certificate); the requester can fetch it through the
pending id. Request, approval, denial, expiry and the executed action are
audit events carrying both actors (``requested_by``, ``approved_by``).

Routes: ``GET /admin/pending[?status=]``, ``GET /admin/pending/{id}``,
``POST /admin/pending/{id}/approve``, ``POST /admin/pending/{id}/deny``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway.admin._request import AUDIT_EXTRA, CALLER, Guard, person_of
from gateway.core.duties import (
    APPROVED,
    PENDING,
    REFUSED,
    SECURITY_ADMIN,
    TWO_PERSON,
    InvalidTransition,
    Ruling,
    allows,
    approval_refusal,
    expiry_due,
    next_state,
    other_enabled_admins,
    ruling,
)
from gateway.core.model import Principal
from gateway.pki import AdminRefused, Credentials
from gateway.state import PendingAction, PrincipalKey

# Runs an approved (or single-admin) action: params, the actor it is done
# for ("tenant/kind/name"), the reason -> the JSON answer.
Executor = Callable[[dict[str, Any], str, str], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Pending:
    """A handler's answer when the action waits for a second admin (202)."""

    item: PendingAction


def key_text(key: PrincipalKey) -> str:
    return "/".join(key)


def text_key(text: str) -> PrincipalKey:
    tenant, kind, name = [*text.split("/", 2), "", ""][:3]
    return (tenant, kind, name)


def pending_json(item: PendingAction) -> dict[str, Any]:
    return {"id": item.id, "action": item.action, "target": item.target,
            "principal": item.principal, "status": item.status, "reason": item.reason,
            "requested_by": item.requester, "rule": item.rule,
            "created": item.created.isoformat(), "expires_at": item.expires_at.isoformat(),
            "approved_by": item.approver, "decided_at":
                item.decided_at.isoformat() if item.decided_at else None,
            "decision_reason": item.decision_reason,
            "result": json.loads(item.result) if item.result else None}


class DualControl:
    def __init__(self, creds: Credentials, executors: dict[str, Executor],
                 ttl: timedelta = timedelta(hours=24)) -> None:
        self.creds = creds
        self.executors = executors
        self.ttl = ttl

    # -- who is who --------------------------------------------------------
    def person(self, key: PrincipalKey) -> Principal | None:
        found = self.creds.registry().principal(*key)
        if found is None:
            return None
        _, p = found
        return Principal(key[0], key[1], key[2], p.roles, p.team)

    def other_enabled_admins(self, target: PrincipalKey | None) -> int:
        principals = (p for tenant in self.creds.registry() for p in tenant.principals.values())
        return other_enabled_admins(principals, self.creds.view.disabled, target)

    def rule(self, action: str, actor: Principal, target: PrincipalKey | None) -> Ruling:
        """The ruling for ``action``; a refusal raises (403, audited by the caller)."""
        person = self.person(target) if target is not None else None
        if target is not None and person is None:
            raise AdminRefused(404, "unknown-principal",
                               f"{key_text(target)} is not declared in tenants/")
        got = ruling(action, actor, person,
                     other_enabled_admins=self.other_enabled_admins(target))
        if got.need == REFUSED:
            raise AdminRefused(403, got.reason, _REFUSAL_TEXT.get(got.reason, got.reason))
        return got

    # -- the gate every dual-controlled handler goes through -----------------
    async def gate(self, action: str, actor: Principal, target: str,
                   principal: PrincipalKey | None, params: dict[str, Any],
                   reason: str) -> Any:
        got = self.rule(action, actor, principal)
        actor_text = key_text(actor.key)
        if got.need != TWO_PERSON:
            return await self.executors[action](params, actor_text, reason)
        now = self.creds.clock()
        item = PendingAction(
            id="P-" + secrets.token_hex(6), action=action, target=target,
            principal=key_text(principal) if principal else "", params=json.dumps(params),
            reason=reason, requester=actor_text, requester_team=actor.team or "",
            rule=got.reason, created=now, expires_at=now + self.ttl)
        self.creds.store.put_pending(item)
        return Pending(item)

    # -- reading, deciding ---------------------------------------------------
    def get(self, pending_id: str) -> PendingAction:
        item = self.creds.store.pending(pending_id)
        if item is None:
            raise AdminRefused(404, "unknown-pending", f"no pending action {pending_id}")
        return self._expire_if_due(item)

    def _expire_if_due(self, item: PendingAction) -> PendingAction:
        now = self.creds.clock()
        if not expiry_due(item.status, item.expires_at, now):
            return item
        expired = replace(item, status=next_state(item.status, "expire"), decided_at=now,
                          decision_reason="expired")
        if self.creds.store.move_pending(item.id, PENDING, expired):
            self.creds.record_admin_event("gateway", "pending-expire", item.id, "expired",
                                          "done", item.action,
                                          extra={"requested_by": item.requester})
        return self.creds.store.pending(item.id) or expired

    def list(self, status: str | None) -> list[PendingAction]:
        items = [self._expire_if_due(i) for i in self.creds.store.pending_actions()]
        return [i for i in items if status is None or i.status == status]

    def _move(self, item: PendingAction, event: str, **changes: Any) -> PendingAction:
        try:
            moved = replace(item, status=next_state(item.status, event), **changes)
        except InvalidTransition as exc:
            raise AdminRefused(409, "pending-not-open",
                               f"{item.id} is {item.status}: it cannot {event}") from exc
        if not self.creds.store.move_pending(item.id, item.status, moved):
            raise AdminRefused(409, "pending-not-open", f"{item.id} was decided meanwhile")
        return moved

    def _check_approver(self, item: PendingAction, approver: Principal) -> None:
        tenant, kind, name = text_key(item.requester)
        # Judged by the team the requester had when asking (stored with the item).
        requester = Principal(tenant, kind, name, team=item.requester_team or None)
        target = text_key(item.principal) if item.principal else None
        why = approval_refusal(requester, approver, target)
        if why is not None:
            raise AdminRefused(403, why, _REFUSAL_TEXT.get(why, why))

    async def approve(self, pending_id: str, approver: Principal, reason: str,
                      extra: dict[str, str]) -> dict[str, Any]:
        item = self.get(pending_id)
        extra.update({"requested_by": item.requester, "approved_by": key_text(approver.key),
                      "pending_action": item.action})
        if not allows(item.status, "approve"):
            raise AdminRefused(409, "pending-not-open", f"{item.id} is {item.status}")
        self._check_approver(item, approver)
        approved = self._move(item, "approve", approver=key_text(approver.key),
                              decided_at=self.creds.clock(), decision_reason=reason)
        params = json.loads(item.params)
        try:
            # The rule again, at the time of the act: state may have changed
            # (e.g. the last other admin was disabled meanwhile).
            requester_person = self.person(text_key(item.requester))
            if requester_person is not None and item.principal:
                self.rule(item.action, requester_person, text_key(item.principal))
            result = await self.executors[item.action](params, item.requester, item.reason)
        except AdminRefused as exc:
            failed = replace(approved, status=next_state(APPROVED, "fail"),
                             result=json.dumps({"refused": exc.reason}))
            self.creds.store.move_pending(item.id, APPROVED, failed)
            self.creds.record_admin_event(item.requester, item.action, item.target, item.reason,
                                          "refused", exc.reason, extra=dict(extra))
            raise
        body = result if isinstance(result, dict) else {}
        done = replace(approved, status=next_state(APPROVED, "succeed"),
                       result=json.dumps(body))
        self.creds.store.move_pending(item.id, APPROVED, done)
        # The executed action's own event: both actors (D6).
        self.creds.record_admin_event(item.requester, item.action, item.target, item.reason,
                                      "done", f"approved in {item.id}", extra=dict(extra))
        return {"pending": pending_json(done), "result": body}

    def deny(self, pending_id: str, decider: Principal, reason: str,
             extra: dict[str, str]) -> dict[str, Any]:
        item = self.get(pending_id)
        extra.update({"requested_by": item.requester, "denied_by": key_text(decider.key)})
        # The requester may withdraw their own request; any other admin may deny.
        denied = self._move(item, "deny", approver=key_text(decider.key),
                            decided_at=self.creds.clock(), decision_reason=reason)
        return {"pending": pending_json(denied)}


_REFUSAL_TEXT = {
    "self-service-refused": "segregation of duties: another admin must do this (D6)",
    "self-disable-refused": "nobody disables themselves (D6)",
    "last-security-admin": "the last enabled security admin cannot be disabled (D6)",
    "own-request": "a second security admin must approve; never the requester (D6)",
    "same-team": "the approver must be of another team than the requester (D6)",
    "missing-role": "only a security admin approves admin actions (D6)",
}


def pending_routes(duties: DualControl) -> Callable[..., None]:
    """Register the pending-action routes (a ``gateway.admin._request.RouteSet``)."""

    def register(r: web.UrlDispatcher, guarded: Guard) -> None:
        def pid(request: web.Request) -> str:
            return request.match_info["id"]

        async def list_pending(request: web.Request, doc: dict[str, Any]) -> Any:
            status = request.query.get("status")
            return {"pending": [pending_json(i) for i in duties.list(status)]}

        async def one(request: web.Request, doc: dict[str, Any]) -> Any:
            return pending_json(duties.get(pid(request)))

        async def approve(request: web.Request, doc: dict[str, Any]) -> Any:
            return await duties.approve(pid(request), person_of(request[CALLER]),
                                        doc.get("reason", ""), request[AUDIT_EXTRA])

        async def deny(request: web.Request, doc: dict[str, Any]) -> Any:
            return duties.deny(pid(request), person_of(request[CALLER]),
                               doc.get("reason", ""), request[AUDIT_EXTRA])

        readers = frozenset({"security-admin", "auditor"})
        admin = frozenset({SECURITY_ADMIN})
        r.add_get("/admin/pending", guarded("pending-list", readers, lambda q: q.path,
                                            list_pending, write=False))
        r.add_get("/admin/pending/{id}", guarded("pending-show", readers, pid, one,
                                                 write=False))
        r.add_post("/admin/pending/{id}/approve", guarded("pending-approve", admin, pid,
                                                          approve))
        r.add_post("/admin/pending/{id}/deny", guarded("pending-deny", admin, pid, deny))
    return register
