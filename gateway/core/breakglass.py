"""Break-glass policy (D6, D7): the case lifecycle and the dual-control rules.

A privileged account is checked out by a person under dual control
(DESIGN.md §5). The case moves through one transition table (h11
``_state.py`` style); anything not in the table is refused::

    (new)   --request-------------> pending
    (new)   --request-emergency---> approved      no approval; the SOC is told
    pending --approve-------------> approved
    pending --deny----------------> denied
    pending --leave---------------> denied        D8: the requester left
    approved --check-out----------> checked-out   the password is shown once
    approved --leave--------------> denied
    checked-out --check-in--------> closed        by hand, at expiry, or at leave
    closed                                        rotated afterwards (a flag)

An emergency case carries a second, small lifecycle: its post-incident
review (``none`` -> ``pending`` -> ``done``).

The rules, each a pure function of frozen inputs that returns a
:class:`Refusal` (status, reason, detail) or None, in the order the service
asks them. The service (``gateway.vault``) does the I/O: the state store,
the vault, the rotation at the shared system, audit and SOC events.
No I/O here, no gateway errors.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from gateway.core.duties import transition
from gateway.core.model import Principal

REQUESTER_ROLE = "privileged-user"
APPROVER_ROLE = "vault-approver"
ADMIN_ROLE = "security-admin"
REVIEWER_ROLES = frozenset({APPROVER_ROLE, ADMIN_ROLE})
# The approver recorded on a case nobody approved: an emergency, a leaver's.
EMERGENCY_APPROVER = "emergency"
LEAVER_APPROVER = "leaver"

# -- the case lifecycle ----------------------------------------------------------
NEW = "new"  # not stored: the state before the request exists
PENDING, APPROVED, DENIED, CHECKED_OUT, CLOSED = (
    "pending", "approved", "denied", "checked-out", "closed")
REQUEST, REQUEST_EMERGENCY = "request", "request-emergency"
APPROVE, DENY, LEAVE, CHECK_OUT, CHECK_IN = "approve", "deny", "leave", "check-out", "check-in"

TRANSITIONS: dict[tuple[str, str], str] = {
    (NEW, REQUEST): PENDING,
    (NEW, REQUEST_EMERGENCY): APPROVED,
    (PENDING, APPROVE): APPROVED,
    (PENDING, DENY): DENIED,
    (PENDING, LEAVE): DENIED,
    (APPROVED, CHECK_OUT): CHECKED_OUT,
    (APPROVED, LEAVE): DENIED,
    (CHECKED_OUT, CHECK_IN): CLOSED,
}
STATES = frozenset({NEW, PENDING, APPROVED, DENIED, CHECKED_OUT, CLOSED})
EVENTS = frozenset({REQUEST, REQUEST_EMERGENCY, APPROVE, DENY, LEAVE, CHECK_OUT, CHECK_IN})
FINAL = frozenset({DENIED, CLOSED})
# The refusal (409) of an event the case's state does not allow.
STATE_REFUSALS = {APPROVE: "not-pending", DENY: "not-pending", CHECK_OUT: "not-approved",
                  CHECK_IN: "not-checked-out"}

# -- the review of an emergency ----------------------------------------------------
REVIEW_NONE, REVIEW_PENDING, REVIEW_DONE = "none", "pending", "done"
REVIEW_OPEN, REVIEW = "open", "review"
REVIEW_TRANSITIONS: dict[tuple[str, str], str] = {
    (REVIEW_NONE, REVIEW_OPEN): REVIEW_PENDING,
    (REVIEW_PENDING, REVIEW): REVIEW_DONE,
}


def next_state(state: str, event: str) -> str:
    """The case's state after ``event``; InvalidTransition if the table has no row."""
    return transition(TRANSITIONS, state, event)


def next_review(state: str, event: str) -> str:
    return transition(REVIEW_TRANSITIONS, state, event)


def allows(state: str, event: str) -> bool:
    return (state, event) in TRANSITIONS


def initial_state(emergency: bool) -> str:
    return next_state(NEW, REQUEST_EMERGENCY if emergency else REQUEST)


# -- the inputs ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BreakGlassPolicy:
    max_duration: timedelta = timedelta(hours=4)
    emergency_duration: timedelta = timedelta(minutes=30)
    approver_other_team: bool = True


class CaseView(Protocol):
    """What the rules read of a stored case (``gateway.state.BreakGlassCase``)."""

    @property
    def id(self) -> str: ...
    @property
    def account(self) -> str: ...
    @property
    def requester(self) -> str: ...
    @property
    def requester_team(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def rotated(self) -> bool: ...
    @property
    def review_status(self) -> str: ...
    @property
    def lease_expires_at(self) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 400 | 403 | 404 | 409
    reason: str  # a stable code: the problem document's reason and the audit event's
    detail: str


def who(p: Principal) -> str:
    """How a case names a person: ``tenant/kind/name``."""
    return f"{p.tenant}/{p.kind}/{p.name}"


def _state_refusal(case: CaseView, event: str) -> Refusal | None:
    if allows(case.status, event):
        return None
    return Refusal(409, STATE_REFUSALS[event], f"the case is {case.status}")


# -- the rules, in the order the service asks them ---------------------------------
def request_refusal(actor: Principal, account: str, accounts: Collection[str], ticket: str,
                    duration: timedelta) -> Refusal | None:
    """May ``actor`` ask for an account (D7): the requester role, a declared
    account, a ticket reference, a positive duration. Emergencies too."""
    if REQUESTER_ROLE not in actor.roles:
        return Refusal(403, "missing-role", f"requesting needs {REQUESTER_ROLE}")
    if account not in accounts:
        return Refusal(404, "unknown-account", f"no privileged account {account!r}")
    if not ticket.strip():
        return Refusal(400, "ticket-required", "a ticket reference is required")
    if duration <= timedelta(0):
        return Refusal(400, "field-invalid", "duration must be positive")
    return None


def lease_duration(requested: timedelta, emergency: bool, policy: BreakGlassPolicy) -> timedelta:
    """The lease a case gets: what was asked, capped by the policy (an
    emergency's cap is shorter)."""
    cap = policy.emergency_duration if emergency else policy.max_duration
    return min(requested, cap)


def decide_refusal(actor: Principal, case: CaseView, policy: BreakGlassPolicy
                   ) -> Refusal | None:
    """May ``actor`` approve or deny ``case`` (D6): the approver role, a
    pending case, a second person, of another team when the policy says so."""
    if APPROVER_ROLE not in actor.roles:
        return Refusal(403, "missing-role", f"deciding needs {APPROVER_ROLE}")
    # Approving and denying are allowed from the same state (pending) alone.
    refused = _state_refusal(case, APPROVE)
    if refused is not None:
        return refused
    # SECURITY: D6. Nobody decides their own request, either way.
    if who(actor) == case.requester:
        return Refusal(403, "self-approval", "nobody approves their own request (D6)")
    # An undeclared team is no team: the rule needs the requester's team.
    if policy.approver_other_team and case.requester_team and \
            actor.team == case.requester_team:
        return Refusal(403, "same-team", "the approver must be of another team")
    return None


def holds_account(case: CaseView) -> bool:
    """The case's password may still work: leased, or closed and not yet rotated."""
    return case.status == CHECKED_OUT or (case.status == CLOSED and not case.rotated)


def checkout_refusal(actor: Principal, case: CaseView, cases: Iterable[CaseView]
                     ) -> Refusal | None:
    """May ``actor`` check ``case`` out: its requester, approved, and no other
    case of the account holds it (one exclusive lease, D7)."""
    if who(actor) != case.requester:
        return Refusal(403, "not-requester", "only the requester checks out")
    refused = _state_refusal(case, CHECK_OUT)
    if refused is not None:
        return refused
    if any(c.account == case.account and c.id != case.id and holds_account(c) for c in cases):
        return Refusal(409, "account-leased", "the account is leased or being rotated")
    return None


def checkin_refusal(actor: Principal | None, case: CaseView) -> Refusal | None:
    """May ``actor`` check ``case`` in: its requester or a security admin; the
    gateway itself (``None``: expiry, a leaver) always may."""
    if actor is not None and who(actor) != case.requester and ADMIN_ROLE not in actor.roles:
        return Refusal(403, "not-requester", "only the requester (or an admin) checks in")
    return _state_refusal(case, CHECK_IN)


def review_refusal(actor: Principal, case: CaseView) -> Refusal | None:
    """May ``actor`` record the review of an emergency: a reviewer role, a
    review pending, a second person (D6)."""
    if not REVIEWER_ROLES & actor.roles:
        return Refusal(403, "missing-role", "reviews need vault-approver or security-admin")
    if (case.review_status, REVIEW) not in REVIEW_TRANSITIONS:
        return Refusal(409, "no-review-pending", "this case needs no review")
    if who(actor) == case.requester:
        return Refusal(403, "self-review", "a second person records the review")
    return None


def lease_expired(case: CaseView, now: datetime) -> bool:
    """A checked-out lease whose end has come (``now`` included)."""
    return case.status == CHECKED_OUT and case.lease_expires_at is not None and \
        case.lease_expires_at <= now


def needs_rotation(case: CaseView) -> bool:
    """Closed, and the password shown not yet replaced at the shared system."""
    return case.status == CLOSED and not case.rotated
