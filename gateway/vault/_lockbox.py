"""Tenant lockbox (D7, D12): the tenants a privileged account reaches are
told of every break-glass case on it, and those whose tenant file says
``lockbox = "approve"`` consent (or not) before the account is checked out.

The policy (reach, the entry lifecycle, who may consent) is pure and lives
in :mod:`gateway.core.lockbox`; this service asks it and does the I/O: the
state store (one :class:`~gateway.state.LockboxEntry` per case and reached
tenant, moved by compare-and-set like a case), the notification to each
reached tenant (through the push outbox: ``GET /notifications`` and its
receiver, by the ``notify`` callable the server wires), the audit events and
the metric. Break-glass (:class:`gateway.vault.BreakGlass`) opens the
entries at the request and asks :meth:`Lockbox.checkout_refusal` before a
checkout; the data plane's ``/lockbox`` routes call :meth:`Lockbox.decide`
and :meth:`Lockbox.review` in the name of the tenant's own principal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.audit import AuditSink, LockboxEvent, SecurityEvents
from gateway.clock import utc_now
from gateway.core.breakglass import Refusal, who
from gateway.core.lockbox import (
    APPROVE,
    APPROVE_MODE,
    DENY,
    EMERGENCY_NOTICE,
    EXPIRE,
    PENDING,
    REQUEST_NOTICE,
    REVIEW,
    SKIPPED,
    WITHDRAW,
    checkout_refusal,
    decide_refusal,
    expired,
    next_review,
    next_state,
    opening,
    reached,
    review_refusal,
)
from gateway.core.model import Principal, Tenant
from gateway.errors import RequestRefused
from gateway.metrics import GatewayMetrics
from gateway.problem import new_incident_id
from gateway.state import BreakGlassCase, LockboxEntry, StateStore

log = logging.getLogger("gateway.vault")
MOVE_ATTEMPTS = 10
# notify(incident, [(tenant, document)]): queue one case's notices (the push outbox).
Notify = Callable[[str, Sequence[tuple[str, Mapping[str, Any]]]], int]


class LockboxRefused(RequestRefused):
    """A lockbox step refused (4xx): the core's :class:`Refusal`, its reason
    code leading the problem document's detail."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.status, refusal.reason,
                         detail=f"{refusal.reason}: {refusal.detail}")
        self.refusal = refusal


def _refuse(refusal: Refusal | None) -> None:
    if refusal is not None:
        raise LockboxRefused(refusal)


class Lockbox:
    def __init__(self, *, store: StateStore, tenants: Callable[[], Iterable[Tenant]],
                 reach: Mapping[str, Sequence[str]], accounts: Mapping[str, str],
                 ttl: timedelta, audit: AuditSink, metrics: GatewayMetrics,
                 notify: Notify | None = None, soc: SecurityEvents | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.tenants = tenants  # the live registry (tenant files are re-read on SIGHUP)
        self.reach = {a: tuple(e) for a, e in reach.items()}
        self.accounts = dict(accounts)  # account -> upstream
        self.ttl = ttl
        self.audit = audit
        self.metrics = metrics
        self.notify = notify  # None: no push outbox here, the tenants read nothing
        self.soc = soc  # D12: a tenant's denial, a consent not given in time
        self.clock = clock

    # -- at the request -------------------------------------------------------------
    def reached_by(self, account: str) -> tuple[Tenant, ...]:
        return reached(self.reach.get(account, ()), self.tenants())

    def open(self, case: BreakGlassCase) -> list[LockboxEntry]:
        """One entry per tenant the case's account reaches, each told at once
        (D12); in approve mode its consent is awaited until now + ttl, or,
        for an emergency, skipped and its review due (D7)."""
        tenants = self.reached_by(case.account)
        if not tenants:
            return []
        notice = new_incident_id()
        entries = []
        for tenant in tenants:
            status, review = opening(tenant.lockbox, case.emergency)
            entries.append(LockboxEntry(
                case_id=case.id, tenant=tenant.id, account=case.account,
                requester=case.requester, requester_team=case.requester_team,
                reason=case.reason, ticket=case.ticket, emergency=case.emergency,
                mode=tenant.lockbox, created=case.created,
                expires_at=case.created + self.ttl if status == PENDING else None,
                notice=notice, status=status, review_status=review))
        self.store.put_lockbox(entries)
        for entry in entries:
            self._record("lockbox-requested", entry, "gateway", "request")
            self.metrics.lockbox_decisions.labels(entry.tenant, entry.status).inc()
        if self.notify is None:
            log.warning("case %s: no push outbox here, the reached tenants are not told",
                        case.id)
        else:
            self.notify(notice, [(e.tenant, self.document(e)) for e in entries])
        return entries

    def document(self, entry: LockboxEntry) -> dict[str, Any]:
        """What a reached tenant is told (never a password)."""
        tenant = entry.requester.partition("/")[0]
        return {
            "type": EMERGENCY_NOTICE if entry.emergency else REQUEST_NOTICE,
            "incident": entry.notice,
            "case": entry.case_id,
            "time": entry.created.astimezone(UTC).isoformat(),
            "tenant": entry.tenant,
            "account": entry.account,
            "shared_system": self.accounts.get(entry.account),
            "requested_by": {"tenant": tenant, "team": entry.requester_team,
                             "principal": entry.requester},
            "reason": entry.reason,
            "ticket": entry.ticket,
            "emergency": entry.emergency,
            "lockbox": entry.mode,
            "status": entry.status,
            # approve mode: until when its consent is awaited (POST /lockbox/{case}/approve)
            "approve_by": entry.expires_at.astimezone(UTC).isoformat()
            if entry.expires_at else None,
            "review_required": entry.status == SKIPPED,
        }

    # -- the tenant's answer (data plane) ---------------------------------------------
    def _entry(self, actor: Principal, case_id: str) -> LockboxEntry | None:
        return self.store.lockbox(case_id, actor.tenant)

    def _move(self, actor: Principal, case_id: str,
              step: Callable[[LockboxEntry | None], LockboxEntry]) -> LockboxEntry:
        for _ in range(MOVE_ATTEMPTS):
            entry = self._entry(actor, case_id)
            moved = step(entry)
            assert entry is not None  # the step refuses a missing entry
            if self.store.move_lockbox(entry, moved):
                return moved
        raise LockboxRefused(Refusal(409, "case-busy", "the case kept changing; try again"))

    def decide(self, actor: Principal, case_id: str, approve: bool,
               reason: str) -> LockboxEntry:
        """``actor`` (a lockbox-approver of a reached tenant in approve mode)
        consents or refuses, within the time limit."""
        now = self.clock()
        self.expire_due(case_id)  # a late answer finds the entry expired (and audited)

        def step(entry: LockboxEntry | None) -> LockboxEntry:
            _refuse(decide_refusal(actor, entry, now))
            assert entry is not None
            return replace(entry, status=next_state(entry.status, APPROVE if approve else DENY),
                           approver=who(actor), decided_at=now, decision_reason=reason)
        entry = self._move(actor, case_id, step)
        incident = self._record("lockbox-approved" if approve else "lockbox-denied", entry,
                                who(actor), reason)
        if not approve and self.soc is not None:
            self.soc.emit("lockbox-denied", "warning", incident, case=case_id,
                          account=entry.account, tenant=entry.tenant, approver=who(actor),
                          requester=entry.requester)
        self.metrics.lockbox_decisions.labels(entry.tenant, entry.status).inc()
        return entry

    def review(self, actor: Principal, case_id: str, notes: str) -> LockboxEntry:
        """The reached tenant's review of a consent an emergency skipped."""
        def step(entry: LockboxEntry | None) -> LockboxEntry:
            _refuse(review_refusal(actor, entry))
            assert entry is not None
            return replace(entry, review_status=next_review(entry.review_status, REVIEW),
                           reviewer=who(actor), reviewed_at=self.clock(), review_notes=notes)
        entry = self._move(actor, case_id, step)
        self._record("lockbox-reviewed", entry, who(actor), notes)
        self.metrics.lockbox_decisions.labels(entry.tenant, "reviewed").inc()
        return entry

    def entries_of(self, tenant: str) -> list[LockboxEntry]:
        """A tenant's own entries, newest first (never another tenant's)."""
        return sorted(self.store.lockbox_entries(tenant=tenant),
                      key=lambda e: (e.created, e.case_id), reverse=True)

    # -- the checkout and the time limit --------------------------------------------
    def checkout_refusal(self, case_id: str) -> Refusal | None:
        """Whether the case's checkout waits for, or was refused, a consent."""
        self.expire_due(case_id)
        return checkout_refusal(self.store.lockbox_entries(case_id=case_id), self.clock())

    def expire_due(self, case_id: str | None = None) -> int:
        """Consents not given in time become expired (audited once, by the
        replica whose compare-and-set wins)."""
        now = self.clock()
        done = 0
        for entry in self.store.lockbox_entries(case_id=case_id):
            if not expired(entry, now):
                continue
            moved = replace(entry, status=next_state(entry.status, EXPIRE), decided_at=now)
            if self.store.move_lockbox(entry, moved):
                incident = self._record("lockbox-expired", moved, "gateway",
                                        "time limit passed")
                if self.soc is not None:
                    self.soc.emit("lockbox-expired", "notice", incident, case=moved.case_id,
                                  account=moved.account, tenant=moved.tenant,
                                  requester=moved.requester)
                self.metrics.lockbox_decisions.labels(moved.tenant, moved.status).inc()
                done += 1
        return done

    def withdraw(self, case_id: str, why: str) -> int:
        """The case was denied (D6) or its requester left (D8): the consents
        still awaited are no longer asked for (and never expire)."""
        done = 0
        for entry in self.store.lockbox_entries(case_id=case_id):
            if entry.status != PENDING:
                continue
            moved = replace(entry, status=next_state(entry.status, WITHDRAW),
                            decided_at=self.clock(), decision_reason=why)
            if self.store.move_lockbox(entry, moved):
                self._record("lockbox-withdrawn", moved, "gateway", why)
                self.metrics.lockbox_decisions.labels(moved.tenant, moved.status).inc()
                done += 1
        return done

    def _record(self, action: Any, entry: LockboxEntry, principal: str, reason: str) -> str:
        incident = new_incident_id()
        self.audit.record(LockboxEvent(
            incident=incident, action=action, case=entry.case_id,
            account=entry.account, tenant=entry.tenant, principal=principal,
            requested_by=entry.requester, mode=entry.mode, status=entry.status,
            emergency=entry.emergency, reason=reason, notice=entry.notice))
        return incident


__all__ = ["APPROVE_MODE", "Lockbox", "LockboxRefused"]
