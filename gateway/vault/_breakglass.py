"""Privileged accounts checked out by people, under dual control (D6, D7).

request (reason, ticket, duration) -> approve | deny by a *different* person
holding ``vault-approver`` (not the requester; not of the requester's team
when policy says so) -> checkout once, by the requester: the password is
shown this once -> an exclusive lease -> check-in or expiry -> the password
is rotated at the shared system, so the one that was shown no longer works.

Emergency: the requester may skip approval. The lease is shorter, a critical
security event goes to the SOC at once, and the case stays open until a
second person records the post-incident review. Every step is audited; the
password never is.

The policy (the case lifecycle's transition table and each dual-control
rule) is pure and lives in :mod:`gateway.core.breakglass`; this service
asks it and does the I/O: the state store, the vault, the rotation at the
shared system, audit and SOC events.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from gateway.audit import SecurityEvents
from gateway.core.breakglass import (
    APPROVE,
    CHECK_IN,
    CHECK_OUT,
    CHECKED_OUT,
    CLOSED,
    DENY,
    EMERGENCY_APPROVER,
    LEAVE,
    LEAVER_APPROVER,
    REVIEW,
    REVIEW_NONE,
    REVIEW_OPEN,
    REVIEW_PENDING,
    BreakGlassPolicy,
    Refusal,
    allows,
    checkin_refusal,
    checkout_refusal,
    decide_refusal,
    initial_state,
    lease_duration,
    lease_expired,
    needs_rotation,
    next_review,
    next_state,
    request_refusal,
    review_refusal,
    who,
)
from gateway.core.model import Principal
from gateway.errors import UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.pki import AdminRefused
from gateway.problem import new_incident_id
from gateway.state import BreakGlassCase, StateStore
from gateway.upstream import UpstreamPool
from gateway.vault._errors import SecretNotFound
from gateway.vault._service import UpstreamCredentials
from gateway.vault._store import Vault

log = logging.getLogger("gateway.vault")
# The policy's home is the core; named here too, where the service is.
__all__ = ["DEFAULT_POLICY", "BreakGlass", "BreakGlassPolicy", "account_secret_id", "who"]
DEFAULT_POLICY = BreakGlassPolicy()


def account_secret_id(account: str) -> str:
    return f"account/{account}"


def _refuse(refusal: Refusal | None) -> None:
    """The core's refusal as the admin plane's error (status, reason, detail)."""
    if refusal is not None:
        raise AdminRefused(refusal.status, refusal.reason, refusal.detail)


class BreakGlass:
    def __init__(self, *, store: StateStore, vault: Vault, pool: UpstreamPool,
                 accounts: Mapping[str, str], upstream_creds: UpstreamCredentials,
                 soc: SecurityEvents, metrics: GatewayMetrics,
                 audit: Callable[..., str], policy: BreakGlassPolicy = DEFAULT_POLICY,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.vault = vault
        self.pool = pool
        self.accounts = dict(accounts)  # account -> upstream
        self.upstream_creds = upstream_creds
        self.soc = soc
        self.metrics = metrics
        self.audit = audit  # Credentials.record_admin_event
        self.policy = policy
        self.clock = clock

    def provision(self, account: str) -> str:
        password = secrets.token_urlsafe(24)
        self.vault.put(account_secret_id(account), password.encode(), kind="account",
                       labels={"upstream": self.accounts[account]})
        return password

    # -- the flow ------------------------------------------------------------
    def _case(self, case_id: str) -> BreakGlassCase:
        case = self.store.breakglass(case_id)
        if case is None:
            raise AdminRefused(404, "unknown-case", f"no break-glass case {case_id}")
        return case

    def request(self, actor: Principal, account: str, reason: str, ticket: str,
                duration: timedelta, emergency: bool) -> BreakGlassCase:
        _refuse(request_refusal(actor, account, self.accounts, ticket, duration))
        now = self.clock()
        case = BreakGlassCase(
            id=f"bg-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}", account=account,
            requester=who(actor), requester_team=actor.team or "", reason=reason,
            ticket=ticket, duration_s=lease_duration(duration, emergency,
                                                     self.policy).total_seconds(),
            emergency=emergency, created=now, status=initial_state(emergency))
        if emergency:
            # No approval; an alert at once and a review that stays open.
            case = replace(case, approver=EMERGENCY_APPROVER, decided_at=now,
                           review_status=next_review(REVIEW_NONE, REVIEW_OPEN))
            self.soc.emit("breakglass-emergency", "critical", new_incident_id(),
                          case=case.id, account=account, requester=case.requester,
                          ticket=ticket, reason=reason)
        self.store.put_breakglass(case)
        self.refresh_metrics()
        return case

    def decide(self, actor: Principal, case_id: str, approve: bool) -> BreakGlassCase:
        case = self._case(case_id)
        _refuse(decide_refusal(actor, case, self.policy))
        case = replace(case, status=next_state(case.status, APPROVE if approve else DENY),
                       approver=who(actor), decided_at=self.clock())
        self.store.put_breakglass(case)
        return case

    def checkout(self, actor: Principal, case_id: str) -> tuple[BreakGlassCase, str]:
        case = self._case(case_id)
        _refuse(checkout_refusal(actor, case, self.store.breakglass_cases()))
        try:
            password = self.vault.get(account_secret_id(case.account)).decode()
        except SecretNotFound as exc:
            raise AdminRefused(409, "account-not-provisioned", "no password in the vault") \
                from exc
        now = self.clock()
        case = replace(case, status=next_state(case.status, CHECK_OUT), checked_out_at=now,
                       lease_expires_at=now + timedelta(seconds=case.duration_s))
        self.store.put_breakglass(case)
        self.metrics.breakglass_checkouts.labels(
            case.account, "emergency" if case.emergency else "approved").inc()
        self.refresh_metrics()
        return case, password

    async def checkin(self, actor: Principal | None, case_id: str,
                      why: str = "checked in") -> BreakGlassCase:
        case = self._case(case_id)
        _refuse(checkin_refusal(actor, case))
        case = replace(case, status=next_state(case.status, CHECK_IN), closed_at=self.clock(),
                       close_reason=why)
        self.store.put_breakglass(case)
        return await self._rotate(case)

    def review(self, actor: Principal, case_id: str, notes: str) -> BreakGlassCase:
        case = self._case(case_id)
        _refuse(review_refusal(actor, case))
        case = replace(case, review_status=next_review(case.review_status, REVIEW),
                       reviewer=who(actor), review_notes=notes)
        self.store.put_breakglass(case)
        self.refresh_metrics()
        return case

    # -- rotation after use ----------------------------------------------------
    async def _rotate(self, case: BreakGlassCase) -> BreakGlassCase:
        """Set a new password at the shared system, so the one shown no longer
        works. The vault gets it first; a failure is retried by maintain()."""
        upstream = self.accounts[case.account]
        password = secrets.token_urlsafe(24)
        self.vault.put(account_secret_id(case.account), password.encode(), kind="account",
                       labels={"upstream": upstream})
        auth = self.upstream_creds.admin_authorization(upstream)
        try:
            await self.pool.admin_call(upstream, f"/_admin/accounts/{case.account}/password",
                                       {"password": password}, auth)
        except UpstreamFailed as exc:
            log.error("rotation of %s after case %s failed (%s); retrying", case.account,
                      case.id, exc.reason)
            self.refresh_metrics()
            return case
        meta = self.vault.meta(account_secret_id(case.account))
        self.vault.delete_versions_before(account_secret_id(case.account), meta.version)
        case = replace(case, rotated=True)
        self.store.put_breakglass(case)
        self.audit("gateway", "breakglass-rotate", case.id, f"after {case.close_reason}",
                   "done", f"account={case.account}")
        self.refresh_metrics()
        return case

    async def end_leases_of(self, principal: tuple[str, str, str], why: str) -> list[str]:
        """D8: a leaver's leases end at once and what it held is rotated."""
        ended = []
        for case in self.store.breakglass_cases(status=CHECKED_OUT):
            if case.requester == "/".join(principal):
                await self.checkin(None, case.id, why)
                ended.append(case.id)
        for case in self.store.breakglass_cases():
            if case.requester == "/".join(principal) and allows(case.status, LEAVE):
                self.store.put_breakglass(replace(case, status=next_state(case.status, LEAVE),
                                                  approver=LEAVER_APPROVER,
                                                  decided_at=self.clock()))
        return ended

    async def maintain(self) -> None:
        """Expired leases are closed and rotated; failed rotations retried
        (also after a restart: the state is durable)."""
        now = self.clock()
        for case in self.store.breakglass_cases(status=CHECKED_OUT):
            if lease_expired(case, now):
                await self.checkin(None, case.id, "lease expired")
                self.audit("gateway", "breakglass-expire", case.id, "lease expired", "done",
                           f"account={case.account}")
        for case in self.store.breakglass_cases(status=CLOSED):
            if needs_rotation(case):
                await self._rotate(case)
        self.refresh_metrics()

    def refresh_metrics(self) -> None:
        cases = self.store.breakglass_cases()
        for account in self.accounts:
            self.metrics.breakglass_active_leases.labels(account).set(
                sum(1 for c in cases if c.account == account and c.status == CHECKED_OUT))
        self.metrics.breakglass_reviews_pending.set(
            sum(1 for c in cases if c.review_status == REVIEW_PENDING))
        now = self.clock()
        for account in self.accounts:
            try:
                created = self.vault.meta(account_secret_id(account)).created
            except SecretNotFound:
                continue
            self.metrics.vault_secret_age.labels(account_secret_id(account)).set(
                (now - created).total_seconds())
