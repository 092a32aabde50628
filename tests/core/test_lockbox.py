"""Tenant lockbox policy (D7) as tables: reach, the entry lifecycle and each
rule. Pure: frozen entries, tenants and principals, an injected ``now``.
Each row is built so that one guard alone decides it; the same refusals over
mTLS are in tests/e2e/test_lockbox.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.breakglass import Refusal
from gateway.core.duties import InvalidTransition
from gateway.core.lockbox import (
    APPROVED,
    DENIED,
    EXPIRED,
    GROUPS,
    NOTIFIED,
    PENDING,
    REVIEW_DONE,
    REVIEW_NONE,
    REVIEW_PENDING,
    SKIPPED,
    TRANSITIONS,
    WITHDRAWN,
    checkout_refusal,
    decide_refusal,
    expired,
    next_state,
    opening,
    reach_problem,
    reached,
    review_refusal,
)
from gateway.core.model import Principal, Tenant

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
LIMIT = NOW + timedelta(hours=4)


def person(tenant: str, name: str, roles: set[str]) -> Principal:
    return Principal(tenant, "person", name, frozenset(roles), "data-protection")


OLGA = person("ores", "olga", {"lockbox-approver"})
FRANK = person("fluvius", "frank", {"lockbox-approver"})  # another tenant
ALICE = person("ores", "alice", {"security-admin", "vault-approver"})  # not the role
DAVE = person("ores", "dave", {"privileged-user", "lockbox-approver"})  # the requester


@dataclass(frozen=True, slots=True)
class Entry:
    case_id: str = "bg-1"
    tenant: str = "ores"
    requester: str = "ores/person/dave"
    status: str = PENDING
    expires_at: datetime | None = LIMIT
    review_status: str = REVIEW_NONE


def tenant(tid: str, kind: str = "dso", *, hes: bool = False, cmh: bool = False,
           lockbox: str = "notify") -> Tenant:
    members = frozenset({"hes_consortium"} if hes else set()) | \
        frozenset({"cmh_coordinator"} if cmh else set())
    return Tenant(tid, tid, kind, memberships=members, lockbox=lockbox)


TENANTS = (tenant("ores", hes=True, cmh=True, lockbox="approve"), tenant("fluvius", hes=True),
           tenant("pidpa", "water", hes=True), tenant("swde", "water"),
           tenant("lumen", "supplier"), tenant("cpas", "social-welfare"),
           tenant("atrias", "clearing-house"), tenant("proximus", "telecom"),
           tenant("hes-operator", "shared-system"), tenant("engie-it", "it-provider"))


# -- reach ---------------------------------------------------------------------------
@pytest.mark.parametrize("entries,expected", [
    ((), set()),  # an undeclared reach reaches nobody
    (("@hes-consortium",), {"ores", "fluvius", "pidpa"}),
    (("@market",), {"ores", "fluvius", "lumen", "cpas", "atrias"}),
    (("@it-clients",), {"ores", "fluvius", "pidpa", "swde", "lumen", "cpas", "atrias",
                        "proximus"}),
    (("@cmh-coordinators", "swde", "proximus"), {"ores", "swde", "proximus"}),
    (("@all-operators",), {t.id for t in TENANTS} - {"hes-operator", "engie-it"}),
    (("fluvius", "fluvius"), {"fluvius"}),
    (("nobody", "@nothing"), set()),
])
def test_reach(entries: tuple[str, ...], expected: set[str]) -> None:
    got = reached(entries, TENANTS)
    assert {t.id for t in got} == expected
    assert [t.id for t in got] == sorted(t.id for t in got)


def test_reach_problems_name_the_entry() -> None:
    ids = [t.id for t in TENANTS]
    assert reach_problem("ores", ids) is None
    assert reach_problem("@market", ids) is None
    assert reach_problem("orse", ids) == "unknown tenant 'orse'"
    problem = reach_problem("@markets", ids)
    assert problem is not None and "unknown group '@markets'" in problem
    assert all(f"@{g}" in problem for g in GROUPS)
    # The configuration error an operator reads (exit 2): every group, sorted.
    assert problem == ("unknown group '@markets' (known: @all-operators, @cmh-coordinators, "
                       "@hes-consortium, @it-clients, @market)")


# -- the lifecycle ---------------------------------------------------------------------
@pytest.mark.parametrize("mode,emergency,expected", [
    ("notify", False, (NOTIFIED, REVIEW_NONE)),
    ("notify", True, (NOTIFIED, REVIEW_NONE)),  # told; nothing was skipped
    ("approve", False, (PENDING, REVIEW_NONE)),
    ("approve", True, (SKIPPED, REVIEW_PENDING)),  # skipped, so reviewed afterwards
])
def test_opening(mode: str, emergency: bool, expected: tuple[str, str]) -> None:
    assert opening(mode, emergency) == expected


def test_only_a_pending_entry_is_decided_or_expires() -> None:
    movable = {state for (state, _event) in TRANSITIONS if state != "new"}
    assert movable == {PENDING}
    assert next_state(PENDING, "withdraw") == WITHDRAWN
    for state in (NOTIFIED, SKIPPED, APPROVED, DENIED, EXPIRED, WITHDRAWN):
        for event in ("approve", "deny", "expire", "withdraw"):
            with pytest.raises(InvalidTransition):
                next_state(state, event)


def test_expiry_boundary() -> None:
    entry = Entry()
    assert not expired(entry, LIMIT - timedelta(microseconds=1))
    assert expired(entry, LIMIT)  # the limit itself is too late
    assert not expired(replace(entry, status=APPROVED), LIMIT + timedelta(days=1))
    assert not expired(replace(entry, expires_at=None), LIMIT + timedelta(days=1))


# -- who may consent ---------------------------------------------------------------------
@pytest.mark.parametrize("actor,entry,now,refusal", [
    (OLGA, Entry(), NOW, None),
    (OLGA, Entry(), LIMIT - timedelta(microseconds=1), None),
    (OLGA, None, NOW, (403, "lockbox-not-your-tenant")),  # not reached: no entry
    (FRANK, Entry(), NOW, (403, "lockbox-not-your-tenant")),  # another tenant's entry
    (ALICE, Entry(), NOW, (403, "missing-role")),
    (DAVE, Entry(), NOW, (403, "self-approval")),  # D6: not one's own request
    (OLGA, Entry(), LIMIT, (409, "lockbox-expired")),
    (OLGA, Entry(status=EXPIRED), NOW, (409, "lockbox-expired")),
    (OLGA, Entry(status=APPROVED), NOW, (409, "lockbox-not-pending")),
    (OLGA, Entry(status=DENIED), NOW, (409, "lockbox-not-pending")),
    (OLGA, Entry(status=NOTIFIED, expires_at=None), NOW, (409, "lockbox-not-pending")),
    (OLGA, Entry(status=SKIPPED, expires_at=None), NOW, (409, "lockbox-not-pending")),
    (OLGA, Entry(status=WITHDRAWN), NOW, (409, "lockbox-not-pending")),
])
def test_decide_refusal(actor: Principal, entry: Entry | None, now: datetime,
                        refusal: tuple[int, str] | None) -> None:
    got = decide_refusal(actor, entry, now)
    assert ((got.status, got.reason) if got else None) == refusal
    if got is not None:
        assert got.detail == detail_of(got.reason, entry)


# The problem document's detail: what the refused approver reads, in words.
DETAILS = {
    "lockbox-not-your-tenant": "the case does not reach the caller's tenant",
    "missing-role": "needs lockbox-approver",
    "self-approval": "nobody approves their own request (D6)",
    "lockbox-expired": "the time limit for consent has passed",
    "lockbox-no-review-pending": "no review is due for this case",
}


def detail_of(reason: str, entry: Entry | None) -> str:
    if reason == "lockbox-not-pending":
        assert entry is not None
        return f"the lockbox entry is {entry.status}"
    return DETAILS[reason]


@pytest.mark.parametrize("actor,entry,refusal", [
    (OLGA, Entry(status=SKIPPED, review_status=REVIEW_PENDING), None),
    (FRANK, Entry(status=SKIPPED, review_status=REVIEW_PENDING), (403, "lockbox-not-your-tenant")),
    (ALICE, Entry(status=SKIPPED, review_status=REVIEW_PENDING), (403, "missing-role")),
    (DAVE, Entry(status=SKIPPED, review_status=REVIEW_PENDING), (403, "self-approval")),
    (OLGA, Entry(status=SKIPPED, review_status=REVIEW_DONE), (409, "lockbox-no-review-pending")),
    (OLGA, Entry(status=NOTIFIED), (409, "lockbox-no-review-pending")),
    (OLGA, None, (403, "lockbox-not-your-tenant")),
])
def test_review_refusal(actor: Principal, entry: Entry | None,
                        refusal: tuple[int, str] | None) -> None:
    got = review_refusal(actor, entry)
    assert ((got.status, got.reason) if got else None) == refusal
    if got is not None:
        assert got.detail == detail_of(got.reason, entry)


# -- the checkout ------------------------------------------------------------------------
def reason_of(refusal: Refusal | None) -> str | None:
    return refusal.reason if refusal else None


@pytest.mark.parametrize("statuses,now,reason", [
    ((), NOW, None),  # an account that reaches nobody
    ((NOTIFIED, NOTIFIED), NOW, None),  # notify mode: told only
    ((APPROVED, NOTIFIED), NOW, None),
    ((SKIPPED,), NOW, None),  # an emergency: reviewed afterwards, not awaited
    ((PENDING,), NOW, "lockbox-pending"),
    ((APPROVED, PENDING), NOW, "lockbox-pending"),  # every approve-mode tenant consents
    ((DENIED, APPROVED), NOW, "lockbox-denied"),
    ((EXPIRED,), NOW, "lockbox-expired"),
    ((PENDING,), LIMIT, "lockbox-expired"),  # not yet stored as expired
])
def test_checkout_refusal(statuses: tuple[str, ...], now: datetime, reason: str | None) -> None:
    entries = [Entry(tenant=f"t{i}", status=s) for i, s in enumerate(statuses)]
    got = checkout_refusal(entries, now)
    assert reason_of(got) == reason
    if got is not None:
        assert got.status == 409 and got.detail.startswith(f"{reason}: t")
