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

Replicas of a fleet share the cases (PostgreSQL state). Every step that
moves a case is a compare-and-set (``StateStore.move_breakglass``): read the
case, ask the rules, store the next state only if nobody moved the case
meanwhile; else read it again and ask again. So two replicas racing on one
case give one decision, one lease, one check-in and one rotation, and the
loser gets the refusal a second attempt gets (409 not-pending,
not-approved, not-checked-out).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from gateway.audit import SecurityEvents
from gateway.clock import utc_now
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
    holds_account,
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
from gateway.vault._lockbox import Lockbox
from gateway.vault._service import UpstreamCredentials
from gateway.vault._store import Vault

log = logging.getLogger("gateway.vault")
# The policy's home is the core; named here too, where the service is.
__all__ = ["DEFAULT_POLICY", "BreakGlass", "BreakGlassPolicy", "account_secret_id", "who"]
DEFAULT_POLICY = BreakGlassPolicy()
# How often a step reads a case again after losing a race on it: each loss
# means the case moved, and a case makes at most a handful of moves.
MOVE_ATTEMPTS = 10
# maintain() retries a failed rotation only this long after the case closed:
# by then the rotation of whoever closed it (this replica or another) has
# finished or failed, so a retry does not run beside it.
ROTATION_RETRY_AFTER = timedelta(seconds=60)


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
                 lockbox: Lockbox | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.vault = vault
        self.pool = pool
        self.accounts = dict(accounts)  # account -> upstream
        self.upstream_creds = upstream_creds
        self.soc = soc
        self.metrics = metrics
        self.audit = audit  # Credentials.record_admin_event
        self.policy = policy
        # D7: the tenants an account reaches are told, and may have to consent.
        self.lockbox = lockbox
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

    def _move(self, case_id: str, step: Callable[[BreakGlassCase], BreakGlassCase | None]
              ) -> tuple[BreakGlassCase, BreakGlassCase] | None:
        """Read the case; ``step`` asks the rules (raising their refusal) and
        says what the case becomes, or None for nothing to do; store it with
        a compare-and-set. A lost race reads again and asks again (D6, D7).
        Returns (before, after), or None."""
        for _ in range(MOVE_ATTEMPTS):
            case = self._case(case_id)
            moved = step(case)
            if moved is None:
                return None
            if self.store.move_breakglass(case, moved):
                return case, moved
        raise AdminRefused(409, "case-busy", "the case kept changing; try again")

    def _moved(self, case_id: str, step: Callable[[BreakGlassCase], BreakGlassCase]
               ) -> tuple[BreakGlassCase, BreakGlassCase]:
        moved = self._move(case_id, step)
        assert moved is not None  # the step always moves or refuses
        return moved

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
        if self.lockbox is not None:
            # Every reached tenant is told now; those in approve mode consent
            # before the checkout (an emergency skips that, and they review).
            self.lockbox.open(case)
        self.refresh_metrics()
        return case

    def decide(self, actor: Principal, case_id: str, approve: bool) -> BreakGlassCase:
        def step(case: BreakGlassCase) -> BreakGlassCase:
            _refuse(decide_refusal(actor, case, self.policy))
            return replace(case, status=next_state(case.status, APPROVE if approve else DENY),
                           approver=who(actor), decided_at=self.clock())
        case = self._moved(case_id, step)[1]
        if not approve and self.lockbox is not None:
            self.lockbox.withdraw(case.id, "case denied")  # no tenant is asked any more
        return case

    def checkout(self, actor: Principal, case_id: str) -> tuple[BreakGlassCase, str]:
        password = ""

        def step(case: BreakGlassCase) -> BreakGlassCase:
            nonlocal password
            _refuse(checkout_refusal(actor, case, self.store.breakglass_cases()))
            if self.lockbox is not None:
                # D7: every reached tenant in approve mode has consented, in time.
                _refuse(self.lockbox.checkout_refusal(case.id))
            try:
                password = self.vault.get(account_secret_id(case.account)).decode()
            except SecretNotFound as exc:
                raise AdminRefused(409, "account-not-provisioned",
                                   "no password in the vault") from exc
            now = self.clock()
            return replace(case, status=next_state(case.status, CHECK_OUT), checked_out_at=now,
                           lease_expires_at=now + timedelta(seconds=case.duration_s))
        before, case = self._moved(case_id, step)
        # One lease per account (D7), across replicas: another case of the
        # account may have been checked out beside this one. Whoever sees the
        # other after its own write steps back (both may; never neither), and
        # the password is shown only after this check.
        if any(c.account == case.account and c.id != case.id and holds_account(c)
               for c in self.store.breakglass_cases()):
            self.store.move_breakglass(case, before)
            raise AdminRefused(409, "account-leased", "the account is leased or being rotated")
        self.metrics.breakglass_checkouts.labels(
            case.account, "emergency" if case.emergency else "approved").inc()
        self.refresh_metrics()
        return case, password

    async def checkin(self, actor: Principal | None, case_id: str,
                      why: str = "checked in") -> BreakGlassCase:
        def step(case: BreakGlassCase) -> BreakGlassCase:
            _refuse(checkin_refusal(actor, case))
            return replace(case, status=next_state(case.status, CHECK_IN),
                           closed_at=self.clock(), close_reason=why)
        # Only the winner of the check-in rotates: one rotation per lease.
        return await self._rotate(self._moved(case_id, step)[1])

    def review(self, actor: Principal, case_id: str, notes: str) -> BreakGlassCase:
        def step(case: BreakGlassCase) -> BreakGlassCase:
            _refuse(review_refusal(actor, case))
            return replace(case, review_status=next_review(case.review_status, REVIEW),
                           reviewer=who(actor), review_notes=notes)
        case = self._moved(case_id, step)[1]
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
        # Recorded on the case as it is now (a review may have moved it).
        moved = self._move(case.id, lambda now: None if now.rotated else
                           replace(now, rotated=True))
        case = moved[1] if moved is not None else self._case(case.id)
        self.audit("gateway", "breakglass-rotate", case.id, f"after {case.close_reason}",
                   "done", f"account={case.account}")
        self.refresh_metrics()
        return case

    async def end_leases_of(self, principal: tuple[str, str, str], why: str) -> list[str]:
        """D8: a leaver's leases end at once and what it held is rotated."""
        ended = []
        for case in self.store.breakglass_cases():
            if case.requester == "/".join(principal) and await self._end(case.id, why):
                ended.append(case.id)
        return ended

    async def _end(self, case_id: str, why: str) -> bool:
        """A leaver's case ends, whatever it became meanwhile on any replica
        (a checkout beside the disable is checked in); True if a lease ended."""
        for _ in range(MOVE_ATTEMPTS):
            case = self._case(case_id)
            if case.status == CHECKED_OUT:
                try:
                    await self.checkin(None, case_id, why)
                    return True
                except AdminRefused:
                    continue  # checked in meanwhile: look again
            if not allows(case.status, LEAVE):
                return False
            if self.store.move_breakglass(case, replace(
                    case, status=next_state(case.status, LEAVE), approver=LEAVER_APPROVER,
                    decided_at=self.clock())):
                if self.lockbox is not None:
                    self.lockbox.withdraw(case.id, why)  # D8: nothing left to consent to
                return False
        raise AdminRefused(409, "case-busy", "the case kept changing; try again")

    async def maintain(self) -> None:
        """Expired leases are closed and rotated; failed rotations retried
        (also after a restart: the state is durable)."""
        now = self.clock()
        if self.lockbox is not None:
            self.lockbox.expire_due()
        for case in self.store.breakglass_cases(status=CHECKED_OUT):
            if lease_expired(case, now):
                try:
                    await self.checkin(None, case.id, "lease expired")
                except AdminRefused as exc:
                    # Checked in meanwhile (by hand, or by another replica's
                    # maintenance): that check-in rotates, not this one.
                    log.info("case %s: not expired here (%s)", case.id, exc.reason)
                    continue
                self.audit("gateway", "breakglass-expire", case.id, "lease expired", "done",
                           f"account={case.account}")
        for case in self.store.breakglass_cases(status=CLOSED):
            if needs_rotation(case) and (case.closed_at is None or
                                         now - case.closed_at >= ROTATION_RETRY_AFTER):
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
