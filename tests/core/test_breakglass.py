"""Break-glass policy (D6, D7) as tables: the case lifecycle and each rule.

Pure: frozen cases and principals, no store, no vault. Each row of a rule's
table is built so that one guard alone decides it; the service's own tests
(tests/vault/test_breakglass_rules.py, tests/e2e/test_rules_breakglass.py)
show the same refusals through the state store and the admin plane.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.breakglass import (
    APPROVED,
    CHECKED_OUT,
    CLOSED,
    DENIED,
    EVENTS,
    FINAL,
    NEW,
    PENDING,
    REVIEW_DONE,
    REVIEW_NONE,
    REVIEW_PENDING,
    REVIEW_TRANSITIONS,
    STATE_REFUSALS,
    STATES,
    TRANSITIONS,
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
from gateway.core.duties import InvalidTransition
from gateway.core.model import Principal

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)


def person(name: str, roles: set[str], team: str | None = None) -> Principal:
    return Principal("ores", "person", name, frozenset(roles), team)


DAVE = person("dave", {"privileged-user"}, "grid-ops")
IRIS = person("iris", {"privileged-user", "vault-approver"})  # no team
GRACE = person("grace", {"privileged-user", "vault-approver"}, "soc")
HEIDI = person("heidi", {"vault-approver"}, "grid-ops")
BOB = person("bob", {"vault-approver", "security-admin"}, "iam")
ALICE = person("alice", {"security-admin"}, "iam")
VERA = person("vera", {"vault-approver"})  # no team
MALLORY = person("mallory", {"reader", "auditor"}, "ops")


@dataclass(frozen=True, slots=True)
class Case:
    id: str = "bg-1"
    account: str = "hes-admin"
    requester: str = "ores/person/dave"
    requester_team: str = "grid-ops"
    status: str = PENDING
    rotated: bool = False
    review_status: str = REVIEW_NONE
    lease_expires_at: datetime | None = None


def case_of(actor: Principal, **kw: object) -> Case:
    return Case(requester=who(actor), requester_team=actor.team or "", **kw)  # type: ignore[arg-type]


# What a refusal tells the person refused (the admin plane shows it): each
# reason with the details it may carry. Checked on every refusal the tables
# below produce, so a message cannot go missing or change unnoticed.
DETAILS = {
    "missing-role": {"requesting needs privileged-user", "deciding needs vault-approver",
                     "reviews need vault-approver or security-admin"},
    "ticket-required": {"a ticket reference is required"},
    "field-invalid": {"duration must be positive"},
    "self-approval": {"nobody approves their own request (D6)"},
    "same-team": {"the approver must be of another team"},
    "not-requester": {"only the requester checks out",
                      "only the requester (or an admin) checks in"},
    "account-leased": {"the account is leased or being rotated"},
    "no-review-pending": {"this case needs no review"},
    "self-review": {"a second person records the review"},
}


def reason(refusal: Refusal | None) -> tuple[int, str] | None:
    if refusal is None:
        return None
    if refusal.reason in DETAILS:
        assert refusal.detail in DETAILS[refusal.reason], refusal
    return (refusal.status, refusal.reason)


# --- the lifecycle ------------------------------------------------------------------

ALLOWED = [
    (NEW, "request", PENDING),
    (NEW, "request-emergency", APPROVED),
    (PENDING, "approve", APPROVED),
    (PENDING, "deny", DENIED),
    (PENDING, "leave", DENIED),
    (APPROVED, "check-out", CHECKED_OUT),
    (APPROVED, "leave", DENIED),
    (CHECKED_OUT, "check-in", CLOSED),
]


@pytest.mark.parametrize("state,event,after", ALLOWED)
def test_every_allowed_transition(state: str, event: str, after: str) -> None:
    assert allows(state, event)
    assert next_state(state, event) == after


def test_the_table_is_exactly_the_allowed_list() -> None:
    assert {(s, e): a for s, e, a in ALLOWED} == TRANSITIONS
    assert {s for s, _ in TRANSITIONS} | set(TRANSITIONS.values()) <= STATES
    assert {e for _, e in TRANSITIONS} == EVENTS


REFUSED = [(s, e) for s, e in itertools.product(sorted(STATES), sorted(EVENTS))
           if (s, e) not in {(s2, e2) for s2, e2, _ in ALLOWED}]


@pytest.mark.parametrize("state,event", REFUSED)
def test_every_other_transition_is_refused(state: str, event: str) -> None:
    assert not allows(state, event)
    with pytest.raises(InvalidTransition) as info:
        next_state(state, event)
    assert (info.value.state, info.value.event) == (state, event)


def test_refused_examples_that_matter() -> None:
    # D7: a pending case is never checked out; a checked-out one never again;
    # a denied or closed case is final; an approved case is not approved twice.
    for state, event in [(PENDING, "check-out"), (CHECKED_OUT, "check-out"),
                         (DENIED, "approve"), (CLOSED, "check-out"), (APPROVED, "approve"),
                         (APPROVED, "deny"), (CHECKED_OUT, "leave")]:
        assert (state, event) in REFUSED
    assert not [k for k in TRANSITIONS if k[0] in FINAL]


def test_an_emergency_starts_approved_a_request_pending() -> None:
    assert (initial_state(False), initial_state(True)) == (PENDING, APPROVED)


@pytest.mark.parametrize("state,event,after", [
    (REVIEW_NONE, "open", REVIEW_PENDING), (REVIEW_PENDING, "review", REVIEW_DONE)])
def test_the_review_lifecycle(state: str, event: str, after: str) -> None:
    assert next_review(state, event) == after


@pytest.mark.parametrize("state,event", [
    (REVIEW_NONE, "review"), (REVIEW_DONE, "review"), (REVIEW_PENDING, "open"),
    (REVIEW_DONE, "open")])
def test_the_review_lifecycle_refuses_the_rest(state: str, event: str) -> None:
    assert (state, event) not in REVIEW_TRANSITIONS
    with pytest.raises(InvalidTransition) as info:
        next_review(state, event)
    assert (info.value.state, info.value.event) == (state, event)


# --- requesting (D7) ----------------------------------------------------------------

ACCOUNTS = frozenset({"hes-admin"})
MIN = timedelta(minutes=1)


@pytest.mark.parametrize("actor,account,ticket,duration,expected", [
    (DAVE, "hes-admin", "CHG-1", 30 * MIN, None),
    (DAVE, "hes-admin", "CHG-1", timedelta(microseconds=1), None),
    # The requester role: approvers, admins and readers do not ask.
    (HEIDI, "hes-admin", "CHG-1", 30 * MIN, (403, "missing-role")),
    (ALICE, "hes-admin", "CHG-1", 30 * MIN, (403, "missing-role")),
    (MALLORY, "hes-admin", "CHG-1", 30 * MIN, (403, "missing-role")),
    # The role comes first: an unknown account does not tell a stranger it is unknown.
    (MALLORY, "root", "", timedelta(0), (403, "missing-role")),
    (DAVE, "root", "CHG-1", 30 * MIN, (404, "unknown-account")),
    (DAVE, "root", "", timedelta(0), (404, "unknown-account")),
    (DAVE, "hes-admin", "", 30 * MIN, (400, "ticket-required")),
    (DAVE, "hes-admin", " \t\n", 30 * MIN, (400, "ticket-required")),
    (DAVE, "hes-admin", "", timedelta(0), (400, "ticket-required")),
    (DAVE, "hes-admin", "CHG-1", timedelta(0), (400, "field-invalid")),
    (DAVE, "hes-admin", "CHG-1", -MIN, (400, "field-invalid")),
])
def test_request_rules(actor: Principal, account: str, ticket: str, duration: timedelta,
                       expected: tuple[int, str] | None) -> None:
    assert reason(request_refusal(actor, account, ACCOUNTS, ticket, duration)) == expected


def test_request_refusals_say_what_is_missing() -> None:
    assert request_refusal(DAVE, "root", ACCOUNTS, "C", MIN) == \
        Refusal(404, "unknown-account", "no privileged account 'root'")
    assert request_refusal(HEIDI, "hes-admin", ACCOUNTS, "C", MIN) == \
        Refusal(403, "missing-role", "requesting needs privileged-user")


POLICY = BreakGlassPolicy()


@pytest.mark.parametrize("asked,emergency,granted", [
    (30 * MIN, False, 30 * MIN),
    (4 * 60 * MIN, False, 4 * 60 * MIN),  # the cap itself
    (4 * 60 * MIN + timedelta(seconds=1), False, 4 * 60 * MIN),
    (9 * 60 * MIN, False, 4 * 60 * MIN),
    (10 * MIN, True, 10 * MIN),
    (30 * MIN, True, 30 * MIN),
    (31 * MIN, True, 30 * MIN),  # an emergency's lease is shorter
    (9 * 60 * MIN, True, 30 * MIN),
])
def test_lease_durations_are_capped(asked: timedelta, emergency: bool,
                                    granted: timedelta) -> None:
    assert lease_duration(asked, emergency, POLICY) == granted


# --- deciding (D6) ------------------------------------------------------------------

NO_TEAM_RULE = BreakGlassPolicy(approver_other_team=False)


@pytest.mark.parametrize("actor,case,policy,expected", [
    (BOB, case_of(DAVE), POLICY, None),
    (GRACE, case_of(DAVE), POLICY, None),
    # The approver role, whatever else the actor holds.
    (ALICE, case_of(DAVE), POLICY, (403, "missing-role")),
    (MALLORY, case_of(DAVE), POLICY, (403, "missing-role")),
    (DAVE, case_of(GRACE), POLICY, (403, "missing-role")),
    # Only a pending case is decided.
    (BOB, case_of(DAVE, status=APPROVED), POLICY, (409, "not-pending")),
    (BOB, case_of(DAVE, status=DENIED), POLICY, (409, "not-pending")),
    (BOB, case_of(DAVE, status=CHECKED_OUT), POLICY, (409, "not-pending")),
    (BOB, case_of(DAVE, status=CLOSED), POLICY, (409, "not-pending")),
    # Nobody decides their own request: without a team, and with the team rule off.
    (IRIS, case_of(IRIS), POLICY, (403, "self-approval")),
    (GRACE, case_of(GRACE), NO_TEAM_RULE, (403, "self-approval")),
    # Another team, when the policy says so; an undeclared team is no team.
    (HEIDI, case_of(DAVE), POLICY, (403, "same-team")),
    (HEIDI, case_of(DAVE), NO_TEAM_RULE, None),
    (VERA, case_of(IRIS), POLICY, None),
    (VERA, Case(requester="ores/person/x", requester_team=""), POLICY, None),
    (replace(VERA, team=""), Case(requester="ores/person/x", requester_team=""), POLICY,
     None),
])
def test_decide_rules(actor: Principal, case: Case, policy: BreakGlassPolicy,
                      expected: tuple[int, str] | None) -> None:
    assert reason(decide_refusal(actor, case, policy)) == expected


def test_a_state_refusal_names_the_state() -> None:
    assert decide_refusal(BOB, case_of(DAVE, status=DENIED), POLICY) == \
        Refusal(409, "not-pending", "the case is denied")
    assert set(STATE_REFUSALS) == {"approve", "deny", "check-out", "check-in"}


# --- checking out: the requester, an approved case, one lease per account (D7) --------

APPROVED_CASE = case_of(DAVE, status=APPROVED)


@pytest.mark.parametrize("actor,case,others,expected", [
    (DAVE, APPROVED_CASE, [], None),
    (BOB, APPROVED_CASE, [], (403, "not-requester")),
    (GRACE, APPROVED_CASE, [], (403, "not-requester")),
    (DAVE, case_of(DAVE, status=PENDING), [], (409, "not-approved")),
    (DAVE, case_of(DAVE, status=DENIED), [], (409, "not-approved")),
    (DAVE, case_of(DAVE, status=CHECKED_OUT), [], (409, "not-approved")),
    (DAVE, case_of(DAVE, status=CLOSED), [], (409, "not-approved")),
    # Another case of the account holds it: leased, or closed and not rotated.
    (DAVE, APPROVED_CASE, [Case(id="bg-2", status=CHECKED_OUT)], (409, "account-leased")),
    (DAVE, APPROVED_CASE, [Case(id="bg-2", status=CLOSED)], (409, "account-leased")),
    (DAVE, APPROVED_CASE, [Case(id="bg-2", status=CLOSED, rotated=True)], None),
    (DAVE, APPROVED_CASE, [Case(id="bg-2", status=APPROVED)], None),
    (DAVE, APPROVED_CASE, [Case(id="bg-2", status=PENDING)], None),
    # Another account's lease, or the case itself in the list, does not count.
    (DAVE, APPROVED_CASE, [Case(id="bg-2", account="cmh-admin", status=CHECKED_OUT)], None),
    (DAVE, APPROVED_CASE, [APPROVED_CASE, replace(APPROVED_CASE, status=CHECKED_OUT)], None),
])
def test_checkout_rules(actor: Principal, case: Case, others: list[Case],
                        expected: tuple[int, str] | None) -> None:
    assert reason(checkout_refusal(actor, case, others)) == expected


@pytest.mark.parametrize("status,rotated,holds", [
    (PENDING, False, False), (APPROVED, False, False), (DENIED, False, False),
    (CHECKED_OUT, False, True), (CHECKED_OUT, True, True),
    (CLOSED, False, True), (CLOSED, True, False)])
def test_what_holds_an_account(status: str, rotated: bool, holds: bool) -> None:
    case = Case(status=status, rotated=rotated)
    assert holds_account(case) is holds
    assert needs_rotation(case) is (status == CLOSED and not rotated)


# --- checking in ---------------------------------------------------------------------

LEASED = case_of(DAVE, status=CHECKED_OUT)


@pytest.mark.parametrize("actor,case,expected", [
    (DAVE, LEASED, None),
    (ALICE, LEASED, None),  # a security admin ends anyone's lease
    (None, LEASED, None),  # the gateway: expiry, a leaver
    (BOB, LEASED, None),
    (HEIDI, LEASED, (403, "not-requester")),
    (GRACE, LEASED, (403, "not-requester")),
    (DAVE, case_of(DAVE, status=APPROVED), (409, "not-checked-out")),
    (None, case_of(DAVE, status=CLOSED), (409, "not-checked-out")),
    (ALICE, case_of(DAVE, status=PENDING), (409, "not-checked-out")),
])
def test_checkin_rules(actor: Principal | None, case: Case,
                       expected: tuple[int, str] | None) -> None:
    assert reason(checkin_refusal(actor, case)) == expected


@pytest.mark.parametrize("status,expires,expired", [
    (CHECKED_OUT, NOW - timedelta(seconds=1), True),
    (CHECKED_OUT, NOW, True),  # the end itself is past
    (CHECKED_OUT, NOW + timedelta(microseconds=1), False),
    (CHECKED_OUT, None, False),
    (CLOSED, NOW - timedelta(hours=1), False),
    (APPROVED, NOW - timedelta(hours=1), False),
])
def test_lease_expiry(status: str, expires: datetime | None, expired: bool) -> None:
    assert lease_expired(Case(status=status, lease_expires_at=expires), NOW) is expired


# --- the review of an emergency (D6: a second person) -----------------------------------

OPEN_REVIEW = case_of(GRACE, status=APPROVED, review_status=REVIEW_PENDING)


@pytest.mark.parametrize("actor,case,expected", [
    (BOB, OPEN_REVIEW, None),
    (ALICE, OPEN_REVIEW, None),  # security-admin alone is a reviewer role
    (HEIDI, OPEN_REVIEW, None),  # vault-approver alone too
    (DAVE, OPEN_REVIEW, (403, "missing-role")),
    (MALLORY, OPEN_REVIEW, (403, "missing-role")),
    (BOB, case_of(GRACE, review_status=REVIEW_NONE), (409, "no-review-pending")),
    (BOB, case_of(GRACE, review_status=REVIEW_DONE), (409, "no-review-pending")),
    (GRACE, OPEN_REVIEW, (403, "self-review")),
])
def test_review_rules(actor: Principal, case: Case, expected: tuple[int, str] | None) -> None:
    assert reason(review_refusal(actor, case)) == expected


def test_who_names_tenant_kind_and_name() -> None:
    assert who(DAVE) == "ores/person/dave"
