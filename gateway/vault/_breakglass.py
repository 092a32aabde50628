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
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from gateway.audit import SecurityEvents
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
REQUESTER_ROLE = "privileged-user"
APPROVER_ROLE = "vault-approver"
REVIEWER_ROLES = frozenset({"vault-approver", "security-admin"})


@dataclass(frozen=True, slots=True)
class BreakGlassPolicy:
    max_duration: timedelta = timedelta(hours=4)
    emergency_duration: timedelta = timedelta(minutes=30)
    approver_other_team: bool = True


def account_secret_id(account: str) -> str:
    return f"account/{account}"


def who(p: Principal) -> str:
    return f"{p.tenant}/{p.kind}/{p.name}"


class BreakGlass:
    def __init__(self, *, store: StateStore, vault: Vault, pool: UpstreamPool,
                 accounts: Mapping[str, str], upstream_creds: UpstreamCredentials,
                 soc: SecurityEvents, metrics: GatewayMetrics,
                 audit: Callable[..., str], policy: BreakGlassPolicy = BreakGlassPolicy(),
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
        if REQUESTER_ROLE not in actor.roles:
            raise AdminRefused(403, "missing-role", f"requesting needs {REQUESTER_ROLE}")
        if account not in self.accounts:
            raise AdminRefused(404, "unknown-account", f"no privileged account {account!r}")
        if not ticket.strip():
            raise AdminRefused(400, "ticket-required", "a ticket reference is required")
        cap = self.policy.emergency_duration if emergency else self.policy.max_duration
        if duration <= timedelta(0):
            raise AdminRefused(400, "field-invalid", "duration must be positive")
        now = self.clock()
        case = BreakGlassCase(
            id=f"bg-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}", account=account,
            requester=who(actor), requester_team=actor.team or "", reason=reason,
            ticket=ticket, duration_s=min(duration, cap).total_seconds(), emergency=emergency,
            created=now)
        if emergency:
            # No approval; an alert at once and a review that stays open.
            case = replace(case, status="approved", approver="emergency", decided_at=now,
                           review_status="pending")
            self.soc.emit("breakglass-emergency", "critical", new_incident_id(),
                          case=case.id, account=account, requester=case.requester,
                          ticket=ticket, reason=reason)
        self.store.put_breakglass(case)
        self.refresh_metrics()
        return case

    def decide(self, actor: Principal, case_id: str, approve: bool) -> BreakGlassCase:
        case = self._case(case_id)
        if APPROVER_ROLE not in actor.roles:
            raise AdminRefused(403, "missing-role", f"deciding needs {APPROVER_ROLE}")
        if case.status != "pending":
            raise AdminRefused(409, "not-pending", f"the case is {case.status}")
        if who(actor) == case.requester:
            raise AdminRefused(403, "self-approval", "nobody approves their own request (D6)")
        if self.policy.approver_other_team and case.requester_team and \
                actor.team == case.requester_team:
            raise AdminRefused(403, "same-team", "the approver must be of another team")
        case = replace(case, status="approved" if approve else "denied", approver=who(actor),
                       decided_at=self.clock())
        self.store.put_breakglass(case)
        return case

    def checkout(self, actor: Principal, case_id: str) -> tuple[BreakGlassCase, str]:
        case = self._case(case_id)
        if who(actor) != case.requester:
            raise AdminRefused(403, "not-requester", "only the requester checks out")
        if case.status != "approved":
            raise AdminRefused(409, "not-approved", f"the case is {case.status}")
        busy = [c for c in self.store.breakglass_cases()
                if c.account == case.account and c.id != case.id
                and (c.status == "checked-out" or (c.status == "closed" and not c.rotated))]
        if busy:
            raise AdminRefused(409, "account-leased", "the account is leased or being rotated")
        try:
            password = self.vault.get(account_secret_id(case.account)).decode()
        except SecretNotFound as exc:
            raise AdminRefused(409, "account-not-provisioned", "no password in the vault") \
                from exc
        now = self.clock()
        case = replace(case, status="checked-out", checked_out_at=now,
                       lease_expires_at=now + timedelta(seconds=case.duration_s))
        self.store.put_breakglass(case)
        self.metrics.breakglass_checkouts.labels(
            case.account, "emergency" if case.emergency else "approved").inc()
        self.refresh_metrics()
        return case, password

    async def checkin(self, actor: Principal | None, case_id: str,
                      why: str = "checked in") -> BreakGlassCase:
        case = self._case(case_id)
        if actor is not None and who(actor) != case.requester and \
                "security-admin" not in actor.roles:
            raise AdminRefused(403, "not-requester", "only the requester (or an admin) checks in")
        if case.status != "checked-out":
            raise AdminRefused(409, "not-checked-out", f"the case is {case.status}")
        case = replace(case, status="closed", closed_at=self.clock(), close_reason=why)
        self.store.put_breakglass(case)
        return await self._rotate(case)

    def review(self, actor: Principal, case_id: str, notes: str) -> BreakGlassCase:
        case = self._case(case_id)
        if not REVIEWER_ROLES & actor.roles:
            raise AdminRefused(403, "missing-role", "reviews need vault-approver or security-admin")
        if case.review_status != "pending":
            raise AdminRefused(409, "no-review-pending", "this case needs no review")
        if who(actor) == case.requester:
            raise AdminRefused(403, "self-review", "a second person records the review")
        case = replace(case, review_status="done", reviewer=who(actor), review_notes=notes)
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
        for case in self.store.breakglass_cases(status="checked-out"):
            if case.requester == "/".join(principal):
                await self.checkin(None, case.id, why)
                ended.append(case.id)
        for case in self.store.breakglass_cases():
            if case.requester == "/".join(principal) and case.status in ("pending", "approved"):
                self.store.put_breakglass(replace(case, status="denied", approver="leaver",
                                                  decided_at=self.clock()))
        return ended

    async def maintain(self) -> None:
        """Expired leases are closed and rotated; failed rotations retried
        (also after a restart: the state is durable)."""
        now = self.clock()
        for case in self.store.breakglass_cases(status="checked-out"):
            if case.lease_expires_at is not None and case.lease_expires_at <= now:
                await self.checkin(None, case.id, "lease expired")
                self.audit("gateway", "breakglass-expire", case.id, "lease expired", "done",
                           f"account={case.account}")
        for case in self.store.breakglass_cases(status="closed"):
            if not case.rotated:
                await self._rotate(case)
        self.refresh_metrics()

    def refresh_metrics(self) -> None:
        cases = self.store.breakglass_cases()
        for account in self.accounts:
            self.metrics.breakglass_active_leases.labels(account).set(
                sum(1 for c in cases if c.account == account and c.status == "checked-out"))
        self.metrics.breakglass_reviews_pending.set(
            sum(1 for c in cases if c.review_status == "pending"))
        now = self.clock()
        for account in self.accounts:
            try:
                created = self.vault.meta(account_secret_id(account)).created
            except SecretNotFound:
                continue
            self.metrics.vault_secret_age.labels(account_secret_id(account)).set(
                (now - created).total_seconds())
