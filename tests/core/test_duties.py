"""The admin plane's separation of duties (D6, D7) as a table: who needs whom."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.duties import (
    DONE,
    FINAL,
    ONE_ADMIN,
    REFUSED,
    ROUTE_ROLES,
    TRANSITIONS,
    TWO_PERSON,
    InvalidTransition,
    allows,
    approval_refusal,
    expiry_due,
    next_state,
    other_enabled_admins,
    ruling,
)
from gateway.core.model import Principal

ALICE = Principal("ores", "person", "alice", frozenset({"security-admin"}), "iam")
BOB = Principal("ores", "person", "bob", frozenset({"security-admin", "vault-approver"}), "iam")
IVAN = Principal("ores", "person", "ivan", frozenset({"security-admin"}), "cyber-defence")
CAROL = Principal("ores", "person", "carol", frozenset({"auditor"}), "internal-audit")
DAVE = Principal("ores", "person", "dave", frozenset({"privileged-user"}), "grid-ops")
HEIDI = Principal("ores", "person", "heidi", frozenset({"vault-approver"}), "grid-ops")
ORES_API = Principal("ores", "service", "api", frozenset({"reader"}))
ORES_FIELD = Principal("ores", "service", "field-ops", frozenset({"reader", "meter-operator"}))
ORES_PERSON_PLAIN = Principal("ores", "person", "pat", frozenset({"reader"}), "grid-ops")
ORES_PRIV_SERVICE = Principal("ores", "service", "robot", frozenset({"privileged-user"}))
FLUVIUS_API = Principal("fluvius", "service", "api", frozenset({"reader"}))
HES_PUSHER = Principal("hes-operator", "service", "pusher", frozenset({"pusher"}))
ERIN = Principal("engie-it", "person", "erin", frozenset({"privileged-user"}), "support")


# (action, actor, target, other enabled admins, need, reason)
TABLE = [
    # D6: nobody issues, rotates or re-enables their own credentials.
    ("certs-issue", ALICE, ALICE, 2, REFUSED, "self-service-refused"),
    ("certs-rotate", ALICE, ALICE, 2, REFUSED, "self-service-refused"),
    ("principal-enable", ALICE, ALICE, 2, REFUSED, "self-service-refused"),
    # Privileged roles, persons, other tenants: two persons.
    ("certs-issue", ALICE, BOB, 2, TWO_PERSON, "privileged-principal"),
    ("certs-issue", ALICE, CAROL, 2, TWO_PERSON, "privileged-principal"),
    ("certs-issue", ALICE, DAVE, 2, TWO_PERSON, "privileged-principal"),
    ("certs-issue", ALICE, HEIDI, 2, TWO_PERSON, "privileged-principal"),
    ("certs-issue", ALICE, ORES_PRIV_SERVICE, 2, TWO_PERSON, "privileged-principal"),
    ("certs-rotate", ALICE, BOB, 2, TWO_PERSON, "privileged-principal"),
    ("principal-enable", ALICE, DAVE, 2, TWO_PERSON, "privileged-principal"),
    ("certs-issue", ALICE, ORES_PERSON_PLAIN, 2, TWO_PERSON, "person-principal"),
    ("certs-rotate", ALICE, ORES_PERSON_PLAIN, 2, TWO_PERSON, "person-principal"),
    ("certs-issue", ALICE, FLUVIUS_API, 2, TWO_PERSON, "other-tenant"),
    ("certs-rotate", ALICE, FLUVIUS_API, 2, TWO_PERSON, "other-tenant"),
    ("principal-enable", ALICE, FLUVIUS_API, 2, TWO_PERSON, "other-tenant"),
    ("certs-issue", ALICE, HES_PUSHER, 2, TWO_PERSON, "other-tenant"),
    ("certs-issue", ALICE, ERIN, 2, TWO_PERSON, "privileged-principal"),
    # A role a shared system's route requires is privileged too (D5: remote
    # disconnects), even on a service of the admin's own tenant.
    ("certs-issue", ALICE, ORES_FIELD, 2, TWO_PERSON, "privileged-principal"),
    ("certs-rotate", ALICE, ORES_FIELD, 2, TWO_PERSON, "privileged-principal"),
    # Services of the admin's own tenant: one admin, as before.
    ("certs-issue", ALICE, ORES_API, 2, ONE_ADMIN, "own-service"),
    ("certs-rotate", ALICE, ORES_API, 2, ONE_ADMIN, "own-service"),
    ("principal-enable", ALICE, ORES_API, 2, ONE_ADMIN, "own-service"),
    # Disabling.
    ("principal-disable", ALICE, ALICE, 2, REFUSED, "self-disable-refused"),
    ("principal-disable", BOB, BOB, 0, REFUSED, "self-disable-refused"),
    ("principal-disable", ALICE, BOB, 0, REFUSED, "last-security-admin"),
    ("principal-disable", ALICE, BOB, 1, TWO_PERSON, "disable-security-admin"),
    ("principal-disable", ALICE, DAVE, 0, ONE_ADMIN, "disable"),
    ("principal-disable", ALICE, FLUVIUS_API, 2, ONE_ADMIN, "disable"),
    # What every identity and secret rests on.
    ("ca-rotate", ALICE, None, 2, TWO_PERSON, "critical-action"),
    ("vault-rekey", ALICE, None, 2, TWO_PERSON, "critical-action"),
    # Not dual-controlled.
    ("certs-revoke", ALICE, None, 2, ONE_ADMIN, "not-dual-controlled"),
    # Revoking is one admin's, whoever the certificate belongs to: a compromise
    # is stopped at once, never held for a second person.
    ("certs-revoke", ALICE, BOB, 2, ONE_ADMIN, "not-dual-controlled"),
    ("certs-revoke", ALICE, FLUVIUS_API, 2, ONE_ADMIN, "not-dual-controlled"),
    ("keys-rotate", ALICE, None, 2, ONE_ADMIN, "not-dual-controlled"),
]


@pytest.mark.parametrize("action,actor,target,others,need,reason", TABLE)
def test_who_needs_whom(action: str, actor: Principal, target: Principal | None, others: int,
                        need: str, reason: str) -> None:
    got = ruling(action, actor, target, other_enabled_admins=others)
    assert (got.need, got.reason) == (need, reason)


def test_disabling_an_admin_while_another_remains_needs_approval() -> None:
    assert ruling("principal-disable", ALICE, BOB, other_enabled_admins=1).need == TWO_PERSON


# (requester, approver, target, refusal)
APPROVALS = [
    (ALICE, ALICE, BOB.key, "own-request"),  # Vault #19214: never one's own request
    (ALICE, BOB, FLUVIUS_API.key, "same-team"),  # both IAM
    (ALICE, CAROL, FLUVIUS_API.key, "missing-role"),  # an auditor approves nothing
    (ALICE, HEIDI, FLUVIUS_API.key, "missing-role"),  # a vault approver is no admin
    (ALICE, IVAN, IVAN.key, "self-service-refused"),  # never approve one's own certificate
    (ALICE, IVAN, BOB.key, None),
    (ALICE, IVAN, None, None),
    (IVAN, BOB, FLUVIUS_API.key, None),
    (IVAN, ALICE, ORES_PERSON_PLAIN.key, None),
]


@pytest.mark.parametrize("requester,approver,target,refusal", APPROVALS)
def test_who_may_approve(requester: Principal, approver: Principal,
                         target: tuple[str, str, str] | None, refusal: str | None) -> None:
    assert approval_refusal(requester, approver, target) == refusal


def test_admins_without_a_team_cannot_approve_each_other() -> None:
    a = Principal("ores", "person", "a", frozenset({"security-admin"}))
    b = Principal("ores", "person", "b", frozenset({"security-admin"}))
    assert approval_refusal(a, b, None) == "same-team"
    assert approval_refusal(a, IVAN, None) is None


@pytest.mark.parametrize("state,event,after", [
    ("pending", "approve", "approved"), ("pending", "deny", "denied"),
    ("pending", "expire", "expired"), ("approved", "succeed", "done"),
    ("approved", "fail", "failed"),
])
def test_lifecycle_transitions(state: str, event: str, after: str) -> None:
    assert next_state(state, event) == after


STATES = ["pending", "approved", "done", "failed", "denied", "expired"]
EVENTS = ["approve", "deny", "expire", "succeed", "fail"]


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("event", EVENTS)
def test_everything_else_is_refused(state: str, event: str) -> None:
    if (state, event) in TRANSITIONS:
        return
    with pytest.raises(InvalidTransition):
        next_state(state, event)


def test_final_states_have_no_way_out() -> None:
    assert DONE in FINAL
    for state in FINAL:
        assert not [k for k in TRANSITIONS if k[0] == state]
    # An approved item cannot be approved (hence executed) twice; the refusal
    # names the state and the event.
    with pytest.raises(InvalidTransition,
                       match="'approve' is not allowed for an item that is 'approved'") as info:
        next_state("approved", "approve")
    assert (info.value.state, info.value.event) == ("approved", "approve")


def test_the_roles_routes_require_are_privileged() -> None:
    """D5/D6: read from the route catalogue, not a list kept by hand."""
    assert "meter-operator" in ROUTE_ROLES


# -- the last admin, expiry, what may be approved ------------------------------------

ADMINS = [ALICE, BOB, IVAN, CAROL, DAVE]  # three security admins


@pytest.mark.parametrize("disabled,target,others", [
    (set(), None, 3),
    (set(), ALICE.key, 2),  # the target is not one of the others
    (set(), DAVE.key, 3),  # not an admin: all three are others
    ({BOB.key}, ALICE.key, 1),  # a disabled admin does not count
    ({BOB.key, IVAN.key}, ALICE.key, 0),  # ALICE is the last one
    ({CAROL.key}, None, 3),  # a disabled non-admin changes nothing
])
def test_other_enabled_admins(disabled: set[tuple[str, str, str]],
                              target: tuple[str, str, str] | None, others: int) -> None:
    assert other_enabled_admins(ADMINS, disabled, target) == others


@pytest.mark.parametrize("state,offset_s,due", [
    ("pending", -1, True),
    ("pending", 0, True),  # the expiry instant itself is past
    ("pending", 1, False),
    ("approved", -3600, False),  # running: never expired under the approver
    ("done", -3600, False),
    ("denied", -3600, False),
    ("expired", -3600, False),
])
def test_expiry_is_due_for_a_pending_item_whose_time_is_up(state: str, offset_s: int,
                                                           due: bool) -> None:
    now = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
    assert expiry_due(state, now + timedelta(seconds=offset_s), now) is due


@pytest.mark.parametrize("state", STATES)
def test_only_a_pending_item_is_approved(state: str) -> None:
    assert allows(state, "approve") is (state == "pending")
    assert allows(state, "deny") is (state == "pending")
