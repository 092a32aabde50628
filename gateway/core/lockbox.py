"""Tenant lockbox (D6, D7, D12): a privileged account's reach, and the
consent of the tenants whose data it can touch.

Every privileged account declares its *reach*: the tenants whose data the
account can touch at its shared system (``[lockbox.reach]`` in the gateway
config; tenant ids or groups derived from the tenant files, see
:data:`GROUPS`). A break-glass request on such an account tells every
reached tenant at once; a tenant whose file says ``lockbox = "approve"``
must also consent, through one of its own ``lockbox-approver`` principals,
within a time limit, before the account is checked out. An emergency skips
that consent, but the tenant is told at once that it was skipped and its
review is required afterwards.

One lockbox entry per (case, reached tenant), through one transition table
(h11 ``_state.py`` style)::

    (new)    --open-notify-------> notified     lockbox = "notify": told only
    (new)    --open-approve------> pending      lockbox = "approve": consent needed
    (new)    --open-emergency----> skipped      approve, but an emergency: review due
    pending  --approve-----------> approved
    pending  --deny--------------> denied       the checkout is refused for good
    pending  --expire------------> expired      the time limit passed without consent
    pending  --withdraw----------> withdrawn    the case itself was denied (D6) or its
                                                requester left (D8): nothing to consent to

And the tenant's review of a skipped consent: ``none`` -> ``pending`` -> ``done``.

Pure: frozen inputs, an injected ``now``, a :class:`Refusal` or None out.
The service (``gateway.vault``) does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from gateway.core.breakglass import Refusal, who
from gateway.core.duties import transition
from gateway.core.model import Principal, Tenant

APPROVER_ROLE = "lockbox-approver"
NOTIFY, APPROVE_MODE = "notify", "approve"
MODES = frozenset({NOTIFY, APPROVE_MODE})

# -- the entry lifecycle -------------------------------------------------------
NEW = "new"
NOTIFIED, PENDING, SKIPPED, APPROVED, DENIED, EXPIRED, WITHDRAWN = (
    "notified", "pending", "skipped", "approved", "denied", "expired", "withdrawn")
OPEN_NOTIFY, OPEN_APPROVE, OPEN_EMERGENCY = "open-notify", "open-approve", "open-emergency"
APPROVE, DENY, EXPIRE, WITHDRAW = "approve", "deny", "expire", "withdraw"
TRANSITIONS: dict[tuple[str, str], str] = {
    (NEW, OPEN_NOTIFY): NOTIFIED,
    (NEW, OPEN_APPROVE): PENDING,
    (NEW, OPEN_EMERGENCY): SKIPPED,
    (PENDING, APPROVE): APPROVED,
    (PENDING, DENY): DENIED,
    (PENDING, EXPIRE): EXPIRED,
    (PENDING, WITHDRAW): WITHDRAWN,
}
# What an entry in each state means for the checkout: None lets it through.
CHECKOUT_REFUSALS: Mapping[str, str] = {
    PENDING: "lockbox-pending",
    DENIED: "lockbox-denied",
    EXPIRED: "lockbox-expired",
}

# -- the tenant's review of a skipped consent ------------------------------------
REVIEW_NONE, REVIEW_PENDING, REVIEW_DONE = "none", "pending", "done"
REVIEW_OPEN, REVIEW = "open", "review"
REVIEW_TRANSITIONS: dict[tuple[str, str], str] = {
    (REVIEW_NONE, REVIEW_OPEN): REVIEW_PENDING,
    (REVIEW_PENDING, REVIEW): REVIEW_DONE,
}

# The document types a reached tenant receives (GET /notifications, its receiver).
REQUEST_NOTICE, EMERGENCY_NOTICE = "lockbox-request", "lockbox-emergency"

# -- reach: tenant groups derived from the tenant files ----------------------------
GROUP_PREFIX = "@"
_MARKET_KINDS = frozenset({"dso", "supplier", "social-welfare", "clearing-house"})
_CLIENT_KINDS = frozenset({"dso", "water", "telecom", "supplier", "social-welfare",
                           "clearing-house"})


def _hes_consortium(t: Tenant) -> bool:
    return "hes_consortium" in t.memberships


def _market(t: Tenant) -> bool:
    return t.kind in _MARKET_KINDS


def _it_clients(t: Tenant) -> bool:
    return t.kind in _CLIENT_KINDS


def _cmh_coordinators(t: Tenant) -> bool:
    return t.cmh_coordinator


def _operators(t: Tenant) -> bool:
    return t.kind not in ("shared-system", "it-provider")


# group name -> which tenants it holds, read from their tenant files
GROUPS = {
    "hes-consortium": _hes_consortium,  # hes_consortium = true (D5: the HES's sharers)
    "market": _market,  # the clearing system's parties: DSOs, suppliers, CPAS, clearing house
    "it-clients": _it_clients,  # the operators the IT provider's platform serves
    "cmh-coordinators": _cmh_coordinators,  # cmh_coordinator = true
    "all-operators": _operators,  # every tenant but the shared systems and IT providers
}


def reach_problem(entry: str, tenant_ids: Iterable[str]) -> str | None:
    """What is wrong with one reach entry (a tenant id or ``@group``), or None."""
    if entry.startswith(GROUP_PREFIX):
        if entry[1:] not in GROUPS:
            return (f"unknown group {entry!r} (known: "
                    + ", ".join(GROUP_PREFIX + g for g in sorted(GROUPS)) + ")")
        return None
    if entry not in set(tenant_ids):
        return f"unknown tenant {entry!r}"
    return None


def reached(entries: Sequence[str], tenants: Iterable[Tenant]) -> tuple[Tenant, ...]:
    """The tenants an account with reach ``entries`` can touch, by id; an
    undeclared reach reaches nobody (no lockbox). Unknown names reach nobody
    (the configuration check refuses them at start)."""
    out: dict[str, Tenant] = {}
    for t in tenants:
        for entry in entries:
            if entry.startswith(GROUP_PREFIX):
                test = GROUPS.get(entry[1:])
                if test is not None and test(t):
                    out[t.id] = t
            elif entry == t.id:
                out[t.id] = t
    return tuple(out[k] for k in sorted(out))


# -- transitions -------------------------------------------------------------------
def next_state(state: str, event: str) -> str:
    return transition(TRANSITIONS, state, event)


def next_review(state: str, event: str) -> str:
    return transition(REVIEW_TRANSITIONS, state, event)


def opening(mode: str, emergency: bool) -> tuple[str, str]:
    """(state, review state) of a new entry of a tenant in ``mode``."""
    if mode == APPROVE_MODE:
        if emergency:
            # D7: the consent is skipped, so the tenant reviews afterwards.
            return next_state(NEW, OPEN_EMERGENCY), next_review(REVIEW_NONE, REVIEW_OPEN)
        return next_state(NEW, OPEN_APPROVE), REVIEW_NONE
    return next_state(NEW, OPEN_NOTIFY), REVIEW_NONE


class EntryView(Protocol):
    """What the rules read of a stored entry (``gateway.state.LockboxEntry``)."""

    @property
    def case_id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def requester(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def review_status(self) -> str: ...


def expired(entry: EntryView, now: datetime) -> bool:
    """A consent still awaited whose time limit has come (``now`` included)."""
    return entry.status == PENDING and entry.expires_at is not None and \
        entry.expires_at <= now


def _approver_refusal(actor: Principal, entry: EntryView | None) -> Refusal | None:
    """Common to deciding and reviewing: the entry is the actor's own
    tenant's, the actor holds the role and did not ask for the account."""
    # SECURITY: D1. Only the reached tenant's own principals answer for it;
    # a principal of another tenant learns nothing (the same 403 whether the
    # case exists or not).
    if entry is None or entry.tenant != actor.tenant:
        return Refusal(403, "lockbox-not-your-tenant",
                       "the case does not reach the caller's tenant")
    if APPROVER_ROLE not in actor.roles:
        return Refusal(403, "missing-role", f"needs {APPROVER_ROLE}")
    # SECURITY: D6. Nobody consents to their own request.
    if who(actor) == entry.requester:
        return Refusal(403, "self-approval", "nobody approves their own request (D6)")
    return None


def decide_refusal(actor: Principal, entry: EntryView | None, now: datetime
                   ) -> Refusal | None:
    """May ``actor`` approve or deny ``entry`` at ``now``."""
    refused = _approver_refusal(actor, entry)
    if refused is not None:
        return refused
    assert entry is not None
    if entry.status == EXPIRED or expired(entry, now):
        return Refusal(409, "lockbox-expired", "the time limit for consent has passed")
    if (entry.status, APPROVE) not in TRANSITIONS:
        return Refusal(409, "lockbox-not-pending", f"the lockbox entry is {entry.status}")
    return None


def review_refusal(actor: Principal, entry: EntryView | None) -> Refusal | None:
    """May ``actor`` record its tenant's review of a skipped consent."""
    refused = _approver_refusal(actor, entry)
    if refused is not None:
        return refused
    assert entry is not None
    if (entry.review_status, REVIEW) not in REVIEW_TRANSITIONS:
        return Refusal(409, "lockbox-no-review-pending", "no review is due for this case")
    return None


def checkout_refusal(entries: Iterable[EntryView], now: datetime) -> Refusal | None:
    """May the case whose lockbox entries are ``entries`` be checked out:
    every tenant whose consent it needs has given it, in time (D7)."""
    for entry in sorted(entries, key=lambda e: e.tenant):
        reason = "lockbox-expired" if expired(entry, now) else \
            CHECKOUT_REFUSALS.get(entry.status)
        if reason is not None:
            # The reason code leads the detail: the person refused sees why.
            return Refusal(409, reason, f"{reason}: {entry.tenant}: {_WHY[reason]}")
    return None


_WHY = {"lockbox-pending": "its lockbox approval is awaited",
        "lockbox-denied": "its lockbox approver denied the access",
        "lockbox-expired": "its lockbox approval was not given in time"}
