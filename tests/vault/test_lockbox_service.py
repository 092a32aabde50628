"""The tenant lockbox service (D7) with its real SQLite state, a frozen clock
and a recording notifier, no sockets: what break-glass opens, what each
reached tenant is told, the checkout's wait, the expiry by maintenance.
The same over mTLS is tests/e2e/test_lockbox.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import LockboxEvent
from gateway.audit._soc import SecurityEvents
from gateway.core.model import Principal, Tenant
from gateway.metrics import GatewayMetrics
from gateway.pki import AdminRefused
from gateway.state import SqliteStore
from gateway.upstream._pool import UpstreamPool
from gateway.vault import Lockbox, LockboxRefused, MasterKeys, SqliteVault
from gateway.vault._breakglass import BreakGlass
from gateway.vault._service import UpstreamCredentials

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
TTL = timedelta(hours=1)


def person(tenant: str, name: str, roles: set[str], team: str = "t") -> Principal:
    return Principal(tenant, "person", name, frozenset(roles), team)


DAVE = person("ores", "dave", {"privileged-user", "lockbox-approver"}, "grid-ops")
BOB = person("ores", "bob", {"vault-approver"}, "iam")
OLGA = person("ores", "olga", {"lockbox-approver"})
TENANTS = (Tenant("ores", "ORES", "dso", memberships=frozenset({"hes_consortium"}),
                  lockbox="approve"),
           Tenant("fluvius", "Fluvius", "dso", memberships=frozenset({"hes_consortium"})),
           Tenant("lumen", "Lumen", "supplier"))


class Recorder:
    writable = True

    def __init__(self) -> None:
        self.events: list[Any] = []

    def record(self, event: Any) -> None:
        self.events.append(event)


class World:
    def __init__(self, tmp: Path, *, notify: bool = True) -> None:
        self.tmp = tmp
        self.now = NOW
        self.metrics = GatewayMetrics()
        self.store = SqliteStore(tmp / "state.db")
        self.vault = SqliteVault(tmp / "vault.db", MasterKeys.generate())
        self.audit = Recorder()
        self.told: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []
        pool = UpstreamPool({}, self.metrics)
        self.lockbox = Lockbox(
            store=self.store, tenants=lambda: TENANTS, reach={"hes-admin": ["@hes-consortium"]},
            accounts={"hes-admin": "hes", "cmh-admin": "cmh"}, ttl=TTL, audit=self.audit,
            metrics=self.metrics, notify=self.notify if notify else None,
            soc=SecurityEvents(file=tmp / "soc.jsonl"), clock=self.clock)
        self.bg = BreakGlass(
            store=self.store, vault=self.vault, pool=pool,
            accounts={"hes-admin": "hes", "cmh-admin": "cmh"},
            upstream_creds=UpstreamCredentials(self.vault, pool, self.metrics),
            soc=SecurityEvents(file=tmp / "soc.jsonl"), metrics=self.metrics,
            audit=lambda *a: "inc", lockbox=self.lockbox, clock=self.clock)
        self.bg.provision("hes-admin")
        self.bg.provision("cmh-admin")

    def clock(self) -> datetime:
        return self.now

    def soc_events(self) -> list[dict[str, Any]]:
        path = self.tmp / "soc.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def notify(self, incident: str, docs: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
        self.told.append((incident, [(t, dict(d)) for t, d in docs]))
        return len(docs)

    def approved_case(self, account: str = "hes-admin", emergency: bool = False) -> str:
        cid = self.bg.request(DAVE, account, "stuck", "CHG-1", timedelta(minutes=10),
                              emergency).id
        if not emergency:
            self.bg.decide(BOB, cid, True)
        return cid

    def actions(self, cid: str) -> list[tuple[str, str]]:
        return [(e.action, e.tenant) for e in self.audit.events
                if isinstance(e, LockboxEvent) and e.case == cid]


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.vault.close()
    w.store.close()


def test_the_request_tells_each_reached_tenant_once(world: World) -> None:
    cid = world.approved_case()
    ((incident, docs),) = world.told
    assert [t for t, _ in docs] == ["fluvius", "ores"]  # lumen is not reached
    by_tenant = dict(docs)
    assert by_tenant["ores"]["status"] == "pending"
    assert by_tenant["ores"]["approve_by"] == (NOW + TTL).isoformat()
    assert by_tenant["fluvius"]["status"] == "notified"
    assert by_tenant["fluvius"]["approve_by"] is None
    assert all(d["incident"] == incident and d["case"] == cid and d["type"] == "lockbox-request"
               for _, d in docs)
    assert world.actions(cid) == [("lockbox-requested", "fluvius"), ("lockbox-requested", "ores")]


def test_an_account_without_reach_opens_no_lockbox(world: World) -> None:
    cid = world.approved_case("cmh-admin")
    assert world.told == [] and world.store.lockbox_entries(case_id=cid) == []
    case, _password = world.bg.checkout(DAVE, cid)
    assert case.status == "checked-out"


def test_the_checkout_waits_for_the_consent(world: World) -> None:
    cid = world.approved_case()
    with pytest.raises(AdminRefused) as info:
        world.bg.checkout(DAVE, cid)
    assert (info.value.status, info.value.reason) == (409, "lockbox-pending")
    assert world.store.breakglass(cid).status == "approved"  # type: ignore[union-attr]
    world.lockbox.decide(OLGA, cid, True, "ok")
    case, _password = world.bg.checkout(DAVE, cid)
    assert case.status == "checked-out"


def test_the_requester_does_not_consent_for_its_own_tenant(world: World) -> None:
    """D6: dave holds lockbox-approver in ORES, but it is his own request."""
    cid = world.approved_case()
    with pytest.raises(LockboxRefused) as info:
        world.lockbox.decide(DAVE, cid, True, "me")
    assert (info.value.status, info.value.reason) == (403, "self-approval")
    assert world.store.lockbox(cid, "ores").status == "pending"  # type: ignore[union-attr]


def test_maintenance_expires_a_consent_not_given_in_time(world: World) -> None:
    cid = world.approved_case()
    world.now = NOW + TTL - timedelta(microseconds=1)
    world.lockbox.expire_due()
    assert world.store.lockbox(cid, "ores").status == "pending"  # type: ignore[union-attr]
    world.now = NOW + TTL
    asyncio.run(world.bg.maintain())
    asyncio.run(world.bg.maintain())  # once: the entry moved
    assert world.store.lockbox(cid, "ores").status == "expired"  # type: ignore[union-attr]
    assert world.actions(cid).count(("lockbox-expired", "ores")) == 1
    with pytest.raises(AdminRefused) as info:
        world.bg.checkout(DAVE, cid)
    assert info.value.reason == "lockbox-expired"
    # D12: the SOC hears of it, under the audit event's incident id.
    (expiry,) = [e for e in world.audit.events if e.action == "lockbox-expired"]
    alert = next(e for e in world.soc_events() if e["kind"] == "lockbox-expired")
    assert (alert["incident"], alert["tenant"], alert["case"]) == (expiry.incident, "ores", cid)


def test_an_emergency_tells_at_once_and_leaves_a_review(world: World) -> None:
    cid = world.approved_case(emergency=True)
    ((_, docs),) = world.told
    assert {d["type"] for _, d in docs} == {"lockbox-emergency"}
    ores = world.store.lockbox(cid, "ores")
    assert ores is not None and (ores.status, ores.review_status) == ("skipped", "pending")
    fluvius = world.store.lockbox(cid, "fluvius")
    assert fluvius is not None and fluvius.review_status == "none"
    case, _password = world.bg.checkout(DAVE, cid)  # no consent awaited
    assert case.status == "checked-out"
    done = world.lockbox.review(OLGA, cid, "fine")
    assert (done.review_status, done.reviewer) == ("done", "ores/person/olga")


def test_without_a_push_outbox_the_lockbox_still_holds(tmp_path: Path) -> None:
    world = World(tmp_path, notify=False)
    try:
        cid = world.approved_case()
        assert world.told == []
        with pytest.raises(AdminRefused):
            world.bg.checkout(DAVE, cid)
    finally:
        world.vault.close()
        world.store.close()


def test_a_denied_case_asks_no_tenant_any_more(world: World) -> None:
    """D6: the security team denied the case: ORES's consent is withdrawn,
    not left to expire (no late expiry event, no consent accepted)."""
    cid = world.bg.request(DAVE, "hes-admin", "stuck", "CHG-2", timedelta(minutes=10),
                           False).id
    world.bg.decide(BOB, cid, False)
    ores = world.store.lockbox(cid, "ores")
    assert ores is not None and (ores.status, ores.decision_reason) == ("withdrawn",
                                                                         "case denied")
    assert world.store.lockbox(cid, "fluvius").status == "notified"  # type: ignore[union-attr]
    world.now = NOW + 2 * TTL
    asyncio.run(world.bg.maintain())
    assert world.actions(cid) == [("lockbox-requested", "fluvius"),
                                  ("lockbox-requested", "ores"),
                                  ("lockbox-withdrawn", "ores")]
    with pytest.raises(LockboxRefused) as info:
        world.lockbox.decide(OLGA, cid, True, "late")
    assert info.value.reason == "lockbox-not-pending"


def test_a_leavers_case_asks_no_tenant_any_more(world: World) -> None:
    """D8: the requester left; the pending consent goes with the case."""
    cid = world.bg.request(DAVE, "hes-admin", "stuck", "CHG-3", timedelta(minutes=10),
                           False).id
    asyncio.run(world.bg.end_leases_of(("ores", "person", "dave"), "principal disabled"))
    assert world.store.breakglass(cid).status == "denied"  # type: ignore[union-attr]
    assert world.store.lockbox(cid, "ores").status == "withdrawn"  # type: ignore[union-attr]


# -- field by field: what the tenants, the audit log, the SOC and the metrics get ----
def decisions(world: World, tenant: str, decision: str) -> float | None:
    return world.metrics.registry.get_sample_value(
        "gateway_lockbox_decisions_total", {"tenant": tenant, "decision": decision})


def lockbox_events(world: World, action: str) -> list[LockboxEvent]:
    return [e for e in world.audit.events if isinstance(e, LockboxEvent) and e.action == action]


def alert(world: World, kind: str) -> dict[str, Any]:
    """The one SOC event of ``kind``, without its time."""
    (event,) = [e for e in world.soc_events() if e["kind"] == kind]
    return {k: v for k, v in event.items() if k != "ts"}


def event_fields(event: LockboxEvent) -> tuple[Any, ...]:
    return (event.action, event.case, event.account, event.tenant, event.principal,
            event.requested_by, event.mode, event.status, event.emergency, event.reason,
            event.notice)


def test_what_each_reached_tenant_is_told(world: World) -> None:
    """D12: the whole notice, never a password."""
    cid = world.approved_case()
    ((incident, docs),) = world.told
    common = {"incident": incident, "case": cid, "time": NOW.isoformat(),
              "account": "hes-admin", "shared_system": "hes",
              "requested_by": {"tenant": "ores", "team": "grid-ops",
                               "principal": "ores/person/dave"},
              "reason": "stuck", "ticket": "CHG-1", "emergency": False,
              "type": "lockbox-request", "review_required": False}
    assert dict(docs) == {
        "fluvius": {**common, "tenant": "fluvius", "lockbox": "notify", "status": "notified",
                    "approve_by": None},
        "ores": {**common, "tenant": "ores", "lockbox": "approve", "status": "pending",
                 "approve_by": (NOW + TTL).isoformat()}}
    world.approved_case(emergency=True)
    (_, emergency), = world.told[1:]
    assert dict(emergency)["ores"]["review_required"] is True
    assert dict(emergency)["fluvius"]["review_required"] is False


def test_a_consent_is_audited_and_counted_field_by_field(world: World) -> None:
    cid = world.approved_case()
    world.now = NOW + timedelta(minutes=5)
    entry = world.lockbox.decide(OLGA, cid, True, "change window agreed")
    assert (entry.status, entry.approver, entry.decided_at, entry.decision_reason) == (
        "approved", "ores/person/olga", NOW + timedelta(minutes=5), "change window agreed")
    events = [e for e in world.audit.events if isinstance(e, LockboxEvent)]
    notice = entry.notice
    assert [event_fields(e) for e in events] == [
        ("lockbox-requested", cid, "hes-admin", "fluvius", "gateway", "ores/person/dave",
         "notify", "notified", False, "request", notice),
        ("lockbox-requested", cid, "hes-admin", "ores", "gateway", "ores/person/dave",
         "approve", "pending", False, "request", notice),
        ("lockbox-approved", cid, "hes-admin", "ores", "ores/person/olga",
         "ores/person/dave", "approve", "approved", False, "change window agreed", notice)]
    incidents = [e.incident for e in events]
    assert all(incidents) and len(set(incidents)) == 3 and notice not in incidents
    assert (decisions(world, "ores", "pending"), decisions(world, "fluvius", "notified"),
            decisions(world, "ores", "approved")) == (1, 1, 1)
    assert not [e for e in world.soc_events() if e["kind"] == "lockbox-denied"]


def test_a_denial_reaches_the_soc_under_its_audit_incident(world: World) -> None:
    cid = world.approved_case()
    entry = world.lockbox.decide(OLGA, cid, False, "not during the freeze")
    assert (entry.status, entry.approver, entry.decision_reason) == (
        "denied", "ores/person/olga", "not during the freeze")
    (denial,) = lockbox_events(world, "lockbox-denied")
    assert (denial.principal, denial.reason, denial.status) == (
        "ores/person/olga", "not during the freeze", "denied")
    assert alert(world, "lockbox-denied") == {
        "kind": "lockbox-denied", "severity": "warning", "incident": denial.incident,
        "case": cid, "account": "hes-admin", "tenant": "ores", "approver": "ores/person/olga",
        "requester": "ores/person/dave"}
    assert decisions(world, "ores", "denied") == 1


def test_an_expiry_is_audited_counted_and_raised_field_by_field(world: World) -> None:
    cid = world.approved_case()
    world.now = NOW + TTL
    assert world.lockbox.expire_due() == 1
    assert world.lockbox.expire_due() == 0
    entry = world.store.lockbox(cid, "ores")
    assert entry is not None and (entry.status, entry.decided_at) == ("expired", NOW + TTL)
    (expiry,) = lockbox_events(world, "lockbox-expired")
    assert (expiry.principal, expiry.reason, expiry.status) == (
        "gateway", "time limit passed", "expired")
    assert alert(world, "lockbox-expired") == {
        "kind": "lockbox-expired", "severity": "notice", "incident": expiry.incident,
        "case": cid, "account": "hes-admin", "tenant": "ores",
        "requester": "ores/person/dave"}
    assert decisions(world, "ores", "expired") == 1


def test_two_expiries_are_counted_as_two(world: World) -> None:
    world.approved_case()
    world.approved_case()
    world.now = NOW + TTL
    assert world.lockbox.expire_due() == 2


def test_a_late_answer_or_a_checkout_expires_its_own_case_only(world: World) -> None:
    late, other = world.approved_case(), world.approved_case()
    world.now = NOW + TTL
    with pytest.raises(LockboxRefused) as info:
        world.lockbox.decide(OLGA, late, True, "too late")
    assert info.value.reason == "lockbox-expired"
    assert world.store.lockbox(late, "ores").status == "expired"  # type: ignore[union-attr]
    assert world.store.lockbox(other, "ores").status == "pending"  # type: ignore[union-attr]
    world.lockbox.checkout_refusal(late)
    assert world.store.lockbox(other, "ores").status == "pending"  # type: ignore[union-attr]


def test_a_checkout_asks_about_its_own_case_only(world: World) -> None:
    agreed, waiting = world.approved_case(), world.approved_case()
    world.lockbox.decide(OLGA, agreed, True, "ok")
    assert world.lockbox.checkout_refusal(agreed) is None
    refusal = world.lockbox.checkout_refusal(waiting)
    assert refusal is not None and refusal.reason == "lockbox-pending"


def test_a_review_is_recorded_audited_and_counted(world: World) -> None:
    cid = world.approved_case(emergency=True)
    world.now = NOW + timedelta(hours=2)
    done = world.lockbox.review(OLGA, cid, "checked the session log")
    assert (done.review_status, done.reviewer, done.reviewed_at, done.review_notes) == (
        "done", "ores/person/olga", NOW + timedelta(hours=2), "checked the session log")
    (review,) = [e for e in world.audit.events if isinstance(e, LockboxEvent)
                 and e.case == cid and e.action == "lockbox-reviewed"]
    assert (review.principal, review.reason, review.tenant) == (
        "ores/person/olga", "checked the session log", "ores")
    assert decisions(world, "ores", "reviewed") == 1


def test_a_withdrawal_is_recorded_once(world: World) -> None:
    cid = world.bg.request(DAVE, "hes-admin", "stuck", "CHG-4", timedelta(minutes=10),
                           False).id
    world.now = NOW + timedelta(minutes=1)
    assert world.lockbox.withdraw(cid, "requester left") == 1
    assert world.lockbox.withdraw(cid, "requester left") == 0  # fluvius was only told
    entry = world.store.lockbox(cid, "ores")
    assert entry is not None and (entry.status, entry.decided_at, entry.decision_reason) == (
        "withdrawn", NOW + timedelta(minutes=1), "requester left")
    (withdrawal,) = lockbox_events(world, "lockbox-withdrawn")
    assert (withdrawal.principal, withdrawal.reason) == ("gateway", "requester left")
    assert decisions(world, "ores", "withdrawn") == 1


def test_a_case_that_keeps_changing_is_refused_after_a_bounded_number_of_tries(
        world: World) -> None:
    """The compare-and-set lost every time (other replicas moving the case):
    a 409 to retry, not a loop without end."""
    from gateway.vault._lockbox import MOVE_ATTEMPTS

    cid = world.approved_case()
    tries: list[str] = []

    def always_lost(old: Any, new: Any) -> bool:
        tries.append(old.case_id)
        return False

    world.store.move_lockbox = always_lost  # type: ignore[method-assign,assignment]
    with pytest.raises(LockboxRefused) as info:
        world.lockbox.decide(OLGA, cid, True, "ok")
    refused = info.value
    assert (refused.status, refused.reason, refused.detail) == (
        409, "case-busy", "case-busy: the case kept changing; try again")
    assert refused.refusal.reason == "case-busy" and len(tries) == MOVE_ATTEMPTS == 10


def test_a_withdrawal_counts_every_consent_it_withdraws_of_its_case_only(
        world: World) -> None:
    both = (TENANTS[0], replace(TENANTS[1], lockbox="approve"), TENANTS[2])
    world.lockbox.tenants = lambda: both
    first = world.bg.request(DAVE, "hes-admin", "stuck", "CHG-5", timedelta(minutes=10),
                             False).id
    second = world.bg.request(DAVE, "hes-admin", "stuck", "CHG-6", timedelta(minutes=10),
                              False).id
    assert world.lockbox.withdraw(first, "requester left") == 2  # ORES and Fluvius
    assert world.store.lockbox(second, "ores").status == "pending"  # type: ignore[union-attr]
    assert world.store.lockbox(second, "fluvius").status == "pending"  # type: ignore[union-attr]


def test_a_review_without_a_skipped_consent_is_refused(world: World) -> None:
    cid = world.approved_case()  # consent awaited, not skipped: nothing to review
    with pytest.raises(LockboxRefused) as info:
        world.lockbox.review(OLGA, cid, "nothing to see")
    assert (info.value.status, info.value.reason) == (409, "lockbox-no-review-pending")


def test_a_tenant_lists_its_own_entries_newest_first(world: World) -> None:
    older = world.approved_case()
    world.now = NOW + timedelta(minutes=1)
    newer = world.approved_case()
    assert [(e.case_id, e.tenant) for e in world.lockbox.entries_of("ores")] == [
        (newer, "ores"), (older, "ores")]
    assert [e.tenant for e in world.lockbox.entries_of("fluvius")] == ["fluvius", "fluvius"]
    assert world.lockbox.entries_of("lumen") == []  # not reached


def test_the_notice_gives_its_times_in_utc_on_a_host_in_another_zone(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        world.approved_case()
    finally:
        monkeypatch.undo()
        time.tzset()
    ((_, docs),) = world.told
    ores = dict(docs)["ores"]
    assert (ores["time"], ores["approve_by"]) == (NOW.isoformat(), (NOW + TTL).isoformat())


def test_a_case_without_a_push_outbox_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path, notify=False)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.vault"):
            cid = world.approved_case()
    finally:
        world.vault.close()
        world.store.close()
    assert f"case {cid}: no push outbox here, the reached tenants are not told" in [
        r.getMessage() for r in caplog.records]
