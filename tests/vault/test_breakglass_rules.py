"""Break-glass dual control (D6, D7), each guard on its own.

The policy object with its real SQLite state and real vault, a frozen
clock, no sockets (the admin-plane tests in ``tests/e2e/test_rules_breakglass.py``
show the same refusals as problem documents and audit events). Every case
is built so that exactly one guard stands between the actor and the step:
remove that guard and the step goes through.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audit._soc import SecurityEvents
from gateway.core.model import Principal
from gateway.metrics import GatewayMetrics
from gateway.pki import AdminRefused
from gateway.state import SqliteStore
from gateway.upstream._pool import UpstreamPool
from gateway.vault import MasterKeys, SqliteVault
from gateway.vault._breakglass import BreakGlass, BreakGlassPolicy
from gateway.vault._service import UpstreamCredentials

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
ACCOUNT = "hes-admin"


def person(name: str, roles: set[str], team: str | None) -> Principal:
    return Principal("ores", "person", name, frozenset(roles), team)


# A requester who also approves, with no team: the team rule cannot stand in
# for the rule that nobody approves their own request.
IRIS = person("iris", {"privileged-user", "vault-approver"}, None)
# A requester who also approves, in a team: only with the team rule switched off.
GRACE = person("grace", {"privileged-user", "vault-approver"}, "soc")
DAVE = person("dave", {"privileged-user"}, "grid-ops")
HEIDI = person("heidi", {"vault-approver"}, "grid-ops")
BOB = person("bob", {"vault-approver", "security-admin"}, "iam")
ALICE = person("alice", {"security-admin"}, "iam")  # no approver role
MALLORY = person("mallory", {"reader", "auditor"}, "ops")  # neither requester nor approver


class World:
    def __init__(self, tmp: Path, policy: BreakGlassPolicy) -> None:
        self.metrics = GatewayMetrics()
        self.store = SqliteStore(tmp / "state.db")
        self.vault = SqliteVault(tmp / "vault.db", MasterKeys.generate())
        pool = UpstreamPool({}, self.metrics)
        self.audited: list[tuple[Any, ...]] = []
        self.bg = BreakGlass(
            store=self.store, vault=self.vault, pool=pool, accounts={ACCOUNT: "hes"},
            upstream_creds=UpstreamCredentials(self.vault, pool, self.metrics),
            soc=SecurityEvents(file=tmp / "soc.jsonl"), metrics=self.metrics,
            audit=lambda *a: self.audited.append(a) or "inc", policy=policy,
            clock=lambda: NOW)
        self.password = self.bg.provision(ACCOUNT)

    def ask(self, who: Principal, ticket: str = "CHG-1", **kw: Any) -> str:
        return self.bg.request(who, ACCOUNT, kw.get("reason", "fix the head-end"), ticket,
                               kw.get("duration", timedelta(minutes=30)),
                               kw.get("emergency", False)).id

    def close(self) -> None:
        self.vault.close()
        self.store.close()


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, BreakGlassPolicy())
    yield w
    w.close()


@pytest.fixture()
def any_team(tmp_path: Path) -> Iterator[World]:
    """A policy without the other-team rule (BreakGlassPolicy allows it)."""
    w = World(tmp_path, BreakGlassPolicy(approver_other_team=False))
    yield w
    w.close()


def refused(fn: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(AdminRefused) as info:
        fn(*args)
    return info.value.status, info.value.reason


# --- D6: nobody approves their own request -------------------------------------

def test_a_requester_who_is_also_an_approver_cannot_approve_their_own_case(
        world: World) -> None:
    cid = world.ask(IRIS)
    assert refused(world.bg.decide, IRIS, cid, True) == (403, "self-approval")
    assert world.store.breakglass(cid).status == "pending"  # type: ignore[union-attr]
    # ...nor deny it (deciding one's own case either way is the requester's to lose).
    assert refused(world.bg.decide, IRIS, cid, False) == (403, "self-approval")


def test_self_approval_is_refused_even_where_the_team_rule_is_off(any_team: World) -> None:
    cid = any_team.ask(GRACE)
    assert refused(any_team.bg.decide, GRACE, cid, True) == (403, "self-approval")
    # The same policy lets a colleague of the same team approve: the refusal
    # above is the self-approval rule, not the team rule.
    other = any_team.ask(DAVE)
    assert any_team.bg.decide(HEIDI, other, True).status == "approved"


def test_same_team_approval_is_refused_under_the_default_policy(world: World) -> None:
    cid = world.ask(DAVE)
    assert refused(world.bg.decide, HEIDI, cid, True) == (403, "same-team")
    assert world.bg.decide(BOB, cid, True).approver == "ores/person/bob"


# --- D7: the approver role, the requester role, the ticket --------------------------

def test_approval_needs_the_vault_approver_role(world: World) -> None:
    cid = world.ask(DAVE)
    for actor in (ALICE, MALLORY, person("erin", {"privileged-user"}, "it")):
        assert refused(world.bg.decide, actor, cid, True) == (403, "missing-role")
    assert world.store.breakglass(cid).status == "pending"  # type: ignore[union-attr]


def test_a_request_needs_the_privileged_user_role(world: World) -> None:
    for actor in (HEIDI, ALICE, MALLORY):
        assert refused(world.ask, actor) == (403, "missing-role")
    assert world.store.breakglass_cases() == []


def test_an_emergency_request_needs_the_role_too(world: World) -> None:
    assert refused(lambda: world.ask(BOB, emergency=True)) == (403, "missing-role")
    assert world.store.breakglass_cases() == []


@pytest.mark.parametrize("ticket", ["", "   ", "\t\n"])
def test_a_request_needs_a_ticket(world: World, ticket: str) -> None:
    assert refused(lambda: world.ask(DAVE, ticket=ticket)) == (400, "ticket-required")
    assert refused(lambda: world.ask(DAVE, ticket=ticket, emergency=True)) == \
        (400, "ticket-required")
    assert world.store.breakglass_cases() == []


# --- checkout only of an approved case ----------------------------------------------

def test_a_pending_case_cannot_be_checked_out(world: World) -> None:
    cid = world.ask(DAVE)
    assert refused(world.bg.checkout, DAVE, cid) == (409, "not-approved")
    case = world.store.breakglass(cid)
    assert case is not None and case.status == "pending" and case.checked_out_at is None


def test_a_denied_case_cannot_be_checked_out(world: World) -> None:
    cid = world.ask(DAVE)
    world.bg.decide(BOB, cid, False)
    assert refused(world.bg.checkout, DAVE, cid) == (409, "not-approved")


def test_an_approved_case_is_checked_out_once_by_its_requester(world: World) -> None:
    cid = world.ask(DAVE)
    world.bg.decide(BOB, cid, True)
    assert refused(world.bg.checkout, BOB, cid) == (403, "not-requester")
    case, password = world.bg.checkout(DAVE, cid)
    assert password == world.password and case.status == "checked-out"
    assert case.checked_out_at == NOW and world.store.breakglass(cid) == case
    assert case.lease_expires_at == NOW + timedelta(minutes=30)
    assert refused(world.bg.checkout, DAVE, cid) == (409, "not-approved")


def test_a_decided_case_cannot_be_decided_again(world: World) -> None:
    cid = world.ask(DAVE)
    world.bg.decide(BOB, cid, False)
    assert refused(world.bg.decide, BOB, cid, True) == (409, "not-pending")
    assert world.store.breakglass(cid).status == "denied"  # type: ignore[union-attr]


def test_durations_are_capped_by_the_policy(world: World) -> None:
    long = world.bg.request(DAVE, ACCOUNT, "fix", "CHG-2", timedelta(hours=9), False)
    assert long.duration_s == 4 * 3600
    urgent = world.bg.request(GRACE, ACCOUNT, "fix", "INC-3", timedelta(hours=9), True)
    assert urgent.duration_s == 30 * 60 and urgent.status == "approved"
    assert refused(lambda: world.ask(DAVE, duration=timedelta(0))) == (400, "field-invalid")


def test_the_requester_does_not_review_their_own_emergency(world: World) -> None:
    cid = world.ask(GRACE, emergency=True)
    assert refused(world.bg.review, GRACE, cid, "fine") == (403, "self-review")
    assert refused(world.bg.review, DAVE, cid, "fine") == (403, "missing-role")
    done = world.bg.review(BOB, cid, "justified")
    assert (done.review_status, done.reviewer, done.review_notes) == \
        ("done", "ores/person/bob", "justified")
    assert refused(world.bg.review, BOB, cid, "again") == (409, "no-review-pending")
    assert refused(world.bg.review, BOB, world.ask(DAVE), "none") == (409, "no-review-pending")


def test_an_account_without_a_password_in_the_vault_is_not_checked_out(world: World) -> None:
    world.bg.accounts["cmh-admin"] = "cmh"  # declared, never provisioned
    cid = world.bg.request(DAVE, "cmh-admin", "fix", "CHG-5", timedelta(minutes=5), False).id
    world.bg.decide(BOB, cid, True)
    assert refused(world.bg.checkout, DAVE, cid) == (409, "account-not-provisioned")
    assert world.store.breakglass(cid).status == "approved"  # type: ignore[union-attr]


# --- one lease per account; unknown cases and accounts; what an emergency leaves --------

def test_one_lease_per_account(world: World) -> None:
    world.bg.accounts["cmh-admin"] = "cmh"
    world.bg.provision("cmh-admin")
    first, second = world.ask(DAVE), world.ask(GRACE)
    other = world.bg.request(DAVE, "cmh-admin", "fix", "CHG-9", timedelta(minutes=5), False).id
    for cid in (first, second, other):
        world.bg.decide(BOB, cid, True)
    world.bg.checkout(DAVE, first)
    assert refused(world.bg.checkout, GRACE, second) == (409, "account-leased")
    assert world.bg.checkout(DAVE, other)[0].status == "checked-out"  # another account
    # Closed but not yet rotated: the password shown may still work, so still busy.
    from dataclasses import replace
    case = world.store.breakglass(first)
    assert case is not None
    world.store.put_breakglass(replace(case, status="closed", rotated=False))
    assert refused(world.bg.checkout, GRACE, second) == (409, "account-leased")
    world.store.put_breakglass(replace(case, status="closed", rotated=True))
    assert world.bg.checkout(GRACE, second)[0].status == "checked-out"


def test_unknown_case_and_unknown_account(world: World) -> None:
    assert refused(world.bg.decide, BOB, "bg-nope", True) == (404, "unknown-case")
    assert refused(world.bg.checkout, DAVE, "bg-nope") == (404, "unknown-case")
    assert refused(lambda: world.bg.request(DAVE, "root", "fix", "CHG-1",
                                            timedelta(minutes=5), False)) == \
        (404, "unknown-account")
    assert world.store.breakglass_cases() == []


def test_a_decision_records_who_and_when(world: World) -> None:
    cid = world.ask(DAVE)
    case = world.bg.decide(BOB, cid, True)
    assert (case.approver, case.decided_at) == ("ores/person/bob", NOW)
    assert world.store.breakglass(cid) == case


def test_an_emergency_alerts_the_soc_with_who_what_and_why(world: World, tmp_path: Path
                                                           ) -> None:
    import json
    case = world.bg.request(GRACE, ACCOUNT, "head-end down", "INC-911",
                            timedelta(minutes=10), True)
    assert (case.status, case.approver, case.decided_at, case.review_status) == \
        ("approved", "emergency", NOW, "pending")
    (event,) = [json.loads(line) for line in (tmp_path / "soc.jsonl").read_text().splitlines()]
    assert event["kind"] == "breakglass-emergency" and event["severity"] == "critical"
    assert event["incident"]
    assert {k: event[k] for k in ("case", "account", "requester", "ticket", "reason")} == {
        "case": case.id, "account": ACCOUNT, "requester": "ores/person/grace",
        "ticket": "INC-911", "reason": "head-end down"}
