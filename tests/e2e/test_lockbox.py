"""The tenant lockbox (D7, D12) over mTLS, the way people meet it: a
security person asks for a privileged account on the admin plane; every
tenant the account reaches (``[lockbox.reach]``, the demo's) is told at
once on the data plane (``GET /notifications``); a tenant in approve mode
(ORES in the demo, ``lockbox = "approve"``) answers through one of its own
``lockbox-approver`` principals (olga) at ``POST /lockbox/{case}/approve``
before the account can be checked out. The pure guards one by one are in
``tests/core/test_lockbox.py``.

One stack for the module; each test opens cases of its own and checks in
what it checks out, so they do not disturb one another.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .conftest import Response, RunningStack, start_stack
from .test_breach_notifications import received, wait_for
from .test_credentials import admin

PROBLEM = "application/problem+json"
HES_CONSORTIUM = {"ores", "fluvius", "sibelga", "resa", "pidpa", "dewatergroep", "farys"}
CMH_PARTIES = {"ores", "resa", "swde", "proximus", "orange", "telenet"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("lockbox"), lockbox=True)
    yield gw
    gw.stop()


class FrozenClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def request_case(gw: RunningStack, account: str, ticket: str, who: str = "dave",
                 tenant: str = "ores", emergency: bool = False) -> str:
    resp = admin(gw, "POST", "/admin/breakglass/requests",
                 {"account": account, "reason": "head-end stuck", "ticket": ticket,
                  "duration_s": 600, "emergency": emergency}, who=who, tenant=tenant)
    assert resp.status == 201, resp.body
    return str(resp.json["id"])


def approve_internally(gw: RunningStack, cid: str) -> None:
    """D6: bob (IAM) approves dave's case; the lockbox is a second, separate gate."""
    resp = admin(gw, "POST", f"/admin/breakglass/requests/{cid}/approve", {"reason": "ok"},
                 who="bob")
    assert resp.status == 200, resp.body


def checkout(gw: RunningStack, cid: str, who: str = "dave", tenant: str = "ores") -> Response:
    return admin(gw, "POST", f"/admin/breakglass/requests/{cid}/checkout", {"reason": "fix"},
                 who=who, tenant=tenant)


def checkin(gw: RunningStack, cid: str, who: str = "dave", tenant: str = "ores") -> None:
    resp = admin(gw, "POST", f"/admin/breakglass/requests/{cid}/checkin", {"reason": "done"},
                 who=who, tenant=tenant)
    assert resp.status == 200, resp.body


def lockbox(gw: RunningStack, tenant: str, name: str, cid: str, step: str,
            reason: str = "ok") -> Response:
    return gw.client(tenant, name).request("POST", f"/lockbox/{cid}/{step}",
                                           {"reason": reason})


def entry(gw: RunningStack, tenant: str, cid: str) -> dict[str, Any]:
    listed = gw.client(tenant, "api").get("/lockbox")
    assert listed.status == 200, listed.body
    return next(e for e in listed.json["cases"] if e["case_id"] == cid)


def problem(resp: Response, status: int, reason: str) -> None:
    """An RFC 9457 problem with an incident id, saying why."""
    assert resp.status == status, resp.body
    assert resp.headers["content-type"].startswith(PROBLEM)
    doc = resp.json
    assert doc["status"] == status and doc["incident"], doc
    assert reason in doc["detail"], doc


def notices(gw: RunningStack, tenant: str, cid: str) -> list[dict[str, Any]]:
    resp = gw.client(tenant).get("/notifications")
    assert resp.status == 200, resp.body
    return [n for n in resp.json["notifications"] if n.get("case") == cid]


def soc_events(gw: RunningStack) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            (gw.stack.work_dir / "soc.jsonl").read_text().splitlines()]


def lockbox_events(gw: RunningStack, cid: str, action: str) -> list[dict[str, Any]]:
    return [e for e in gw.audit_events() if e.get("event") == "lockbox"
            and e["case"] == cid and e["action"] == action]


def test_approve_mode_needs_the_tenants_consent_before_checkout(stack: RunningStack) -> None:
    """D7: hes-admin reaches the HES consortium; ORES (approve) must consent,
    the others (notify) are told only. Without olga's consent the internally
    approved case is not checked out; with it, it is."""
    cid = request_case(stack, "hes-admin", "CHG-3001")
    approve_internally(stack, cid)
    refused = checkout(stack, cid)
    problem(refused, 409, "lockbox-pending")
    assert "ores" in refused.json["detail"] and "credential" not in refused.json
    assert entry(stack, "ores", cid)["status"] == "pending"
    assert entry(stack, "fluvius", cid)["status"] == "notified"  # notify mode: nothing to do
    ok = lockbox(stack, "ores", "olga", cid, "approve", "checked with our grid ops")
    assert ok.status == 200, ok.body
    assert ok.json["status"] == "approved" and ok.json["approver"] == "ores/person/olga"
    out = checkout(stack, cid)
    assert out.status == 200, out.body
    password = out.json["credential"]["password"]
    checkin(stack, cid)
    # Audited: each reached tenant told, olga's consent with her name and tenant.
    told = {e["tenant"] for e in lockbox_events(stack, cid, "lockbox-requested")}
    assert told == HES_CONSORTIUM
    approved = lockbox_events(stack, cid, "lockbox-approved")
    assert [(e["tenant"], e["principal"], e["mode"]) for e in approved] == \
        [("ores", "ores/person/olga", "approve")]
    assert approved[0]["reason"] == "checked with our grid ops"
    assert password not in (stack.stack.work_dir / "audit.jsonl").read_text()
    assert stack.metric("gateway_lockbox_decisions_total", tenant="ores",
                        decision="approved") >= 1


def test_notify_mode_tenants_are_told_but_not_asked(stack: RunningStack) -> None:
    """An account reaching only notify-mode tenants is checked out after the
    internal approval alone (D7: consent only where the tenant asks for it)."""
    gw = stack.stack.gateway
    before = gw.lockbox.reach
    gw.lockbox.reach = {**before, "clearing-admin": ("fluvius", "sibelga")}
    try:
        cid = request_case(stack, "clearing-admin", "CHG-3002")
    finally:
        gw.lockbox.reach = before
    approve_internally(stack, cid)
    out = checkout(stack, cid)
    assert out.status == 200, out.body
    checkin(stack, cid)
    for tenant in ("fluvius", "sibelga"):
        assert entry(stack, tenant, cid)["status"] == "notified"
        (notice,) = notices(stack, tenant, cid)
        assert notice["type"] == "lockbox-request" and notice["lockbox"] == "notify"
    # ORES was not reached: it holds nothing of this case.
    assert notices(stack, "ores", cid) == []
    assert all(e["case_id"] != cid for e in
               stack.client("ores", "api").get("/lockbox").json["cases"])


def test_each_reached_tenant_is_told_and_no_other(stack: RunningStack) -> None:
    """D1, D12: the notice lands in each reached tenant's GET /notifications
    (who, which account, why, the ticket; never a password) and in no other
    tenant's."""
    cid = request_case(stack, "cmh-admin", "CHG-3003")
    for tenant in CMH_PARTIES:
        (notice,) = notices(stack, tenant, cid)
        assert notice["type"] == "lockbox-request"
        assert notice["account"] == "cmh-admin" and notice["shared_system"] == "cmh"
        assert notice["requested_by"] == {"tenant": "ores", "team": "grid-ops",
                                          "principal": "ores/person/dave"}
        assert notice["ticket"] == "CHG-3003" and notice["reason"] == "head-end stuck"
        assert notice["incident"] and notice["time"]
        assert "password" not in json.dumps(notice)
    (ores,) = notices(stack, "ores", cid)
    assert ores["lockbox"] == "approve" and ores["approve_by"]
    for tenant in ("fluvius", "sibelga", "pidpa", "engie-it", "lumen-energie"):
        assert notices(stack, tenant, cid) == [], tenant
    # Delivered to ORES's receiver too, through the push outbox, once, under
    # its own idempotency key; no other tenant's receiver gets it.
    key = f"gateway:lockbox/{ores['incident']}/ores"
    wait_for(lambda: key in received(stack, "ores"))
    doc = received(stack, "ores")[key]
    assert doc["kind"] == "lockbox-notification" and doc["notification"] == ores
    assert doc["batch_id"] == ores["incident"] and doc["tenant"] == "ores"
    assert not any(k.startswith(f"gateway:lockbox/{ores['incident']}/")
                   for k in received(stack, "fluvius"))


def test_a_principal_of_another_tenant_cannot_answer(stack: RunningStack) -> None:
    """D1: frank is Fluvius's lockbox-approver; cmh-admin does not reach
    Fluvius, so he cannot consent for ORES (403, the case unchanged), and he
    is told nothing more for asking about a case that does not exist."""
    cid = request_case(stack, "cmh-admin", "CHG-3004")
    for step in ("approve", "deny", "review"):
        problem(lockbox(stack, "fluvius", "frank", cid, step), 403, "lockbox-not-your-tenant")
    problem(lockbox(stack, "fluvius", "frank", "bg-20000101000000-000000", "approve"), 403,
            "lockbox-not-your-tenant")
    # D12: answering for another tenant is a signal for the SOC.
    assert any(e["kind"] == "lockbox-refused" and e["principal"] == "frank"
               and e["tenant"] == "fluvius" for e in soc_events(stack))
    assert entry(stack, "ores", cid)["status"] == "pending"
    assert all(e["case_id"] != cid for e in
               stack.client("fluvius", "api").get("/lockbox").json["cases"])
    # Reached but in notify mode: nothing to consent to.
    hes = request_case(stack, "hes-admin", "CHG-3005")
    problem(lockbox(stack, "fluvius", "frank", hes, "approve"), 409, "lockbox-not-pending")


def test_consent_needs_the_lockbox_approver_role(stack: RunningStack) -> None:
    cid = request_case(stack, "cmh-admin", "CHG-3006")
    for name in ("api", "alice", "bob"):  # a service, a security admin, a vault-approver
        problem(lockbox(stack, "ores", name, cid, "approve"), 403, "missing-role")
    assert entry(stack, "ores", cid)["status"] == "pending"
    assert lockbox_events(stack, cid, "lockbox-approved") == []
    # A body is JSON, as on every data-plane route; the case stays pending.
    olga = stack.client("ores", "olga")
    form = olga.request("POST", f"/lockbox/{cid}/approve", headers={
        "Content-Type": "application/x-www-form-urlencoded"}, body=None)
    assert form.status == 200  # no body: a consent without a reason
    other = request_case(stack, "cmh-admin", "CHG-3012")
    raw = olga.request("POST", f"/lockbox/{other}/approve", body={"reason": "x"},
                       headers={"Content-Type": "text/plain"})
    assert raw.status == 415 and raw.headers["content-type"].startswith(PROBLEM)
    assert entry(stack, "ores", other)["status"] == "pending"
    assert [e["tenant"] for e in lockbox_events(stack, cid, "lockbox-approved")] == ["ores"]


def test_a_denial_refuses_the_checkout(stack: RunningStack) -> None:
    cid = request_case(stack, "cmh-admin", "CHG-3007")
    approve_internally(stack, cid)
    denied = lockbox(stack, "ores", "olga", cid, "deny", "no maintenance window today")
    assert denied.status == 200 and denied.json["status"] == "denied", denied.body
    problem(checkout(stack, cid), 409, "lockbox-denied")
    # Decided once: a later consent does not undo the denial.
    problem(lockbox(stack, "ores", "olga", cid, "approve"), 409, "lockbox-not-pending")
    problem(checkout(stack, cid), 409, "lockbox-denied")
    (event,) = lockbox_events(stack, cid, "lockbox-denied")
    assert event["principal"] == "ores/person/olga" and event["tenant"] == "ores"
    # D12: the SOC hears of the denial, under the audit event's incident id.
    alert = next(e for e in soc_events(stack) if e["kind"] == "lockbox-denied"
                 and e["case"] == cid)
    assert alert["incident"] == event["incident"] and alert["severity"] == "warning"


def test_consent_not_given_in_time_expires(stack: RunningStack) -> None:
    """The consent is awaited [lockbox] ttl_s; after it, neither the consent
    nor the checkout is accepted (409 lockbox-expired), and the expiry is
    audited once."""
    gw = stack.stack.gateway
    clock = FrozenClock()
    bg_clock, lb_clock = gw.breakglass.clock, gw.lockbox.clock
    gw.breakglass.clock = gw.lockbox.clock = clock
    try:
        cid = request_case(stack, "cmh-admin", "CHG-3008")
        approve_internally(stack, cid)
        ttl = gw.lockbox.ttl
        clock.now += ttl - timedelta(seconds=1)
        problem(checkout(stack, cid), 409, "lockbox-pending")  # not before its time
        clock.now += timedelta(seconds=1)
        problem(checkout(stack, cid), 409, "lockbox-expired")
        problem(lockbox(stack, "ores", "olga", cid, "approve"), 409, "lockbox-expired")
        assert entry(stack, "ores", cid)["status"] == "expired"
    finally:
        gw.breakglass.clock, gw.lockbox.clock = bg_clock, lb_clock
    (event,) = lockbox_events(stack, cid, "lockbox-expired")
    assert event["tenant"] == "ores" and event["principal"] == "gateway"


def test_an_emergency_skips_consent_tells_at_once_and_needs_the_tenants_review(
        stack: RunningStack) -> None:
    """erin (ENGIE IT) takes itsm-support in an emergency: no consent is
    awaited, every client company is told at once that it was skipped, and
    ORES (approve mode) owes a review its lockbox-approver records."""
    cid = request_case(stack, "itsm-support", "INC-3009", who="erin", tenant="engie-it",
                       emergency=True)
    (notice,) = notices(stack, "ores", cid)
    assert notice["type"] == "lockbox-emergency" and notice["emergency"] is True
    assert notice["review_required"] is True and notice["status"] == "skipped"
    assert notices(stack, "fluvius", cid)[0]["type"] == "lockbox-emergency"
    assert notices(stack, "hes-operator", cid) == []  # a shared system is no IT client
    out = checkout(stack, cid, who="erin", tenant="engie-it")
    assert out.status == 200, out.body
    checkin(stack, cid, who="erin", tenant="engie-it")
    mine = entry(stack, "ores", cid)
    assert (mine["status"], mine["review_status"]) == ("skipped", "pending")
    assert entry(stack, "fluvius", cid)["review_status"] == "none"  # notify: told only
    # The review: ORES's own lockbox-approver, once.
    problem(lockbox(stack, "ores", "api", cid, "review"), 403, "missing-role")
    problem(lockbox(stack, "fluvius", "frank", cid, "review"), 409,
            "lockbox-no-review-pending")
    done = lockbox(stack, "ores", "olga", cid, "review", "justified; ticket INC-3009 closed")
    assert done.status == 200 and done.json["review_status"] == "done", done.body
    assert done.json["reviewer"] == "ores/person/olga"
    problem(lockbox(stack, "ores", "olga", cid, "review"), 409, "lockbox-no-review-pending")
    (event,) = lockbox_events(stack, cid, "lockbox-reviewed")
    assert event["tenant"] == "ores" and event["emergency"] is True
    assert event["reason"] == "justified; ticket INC-3009 closed"


def test_gateway_review_lists_lockbox_decisions(stack: RunningStack, tmp_path: Path) -> None:
    """``gateway review --lockbox`` (carol, the auditor): each reached
    tenant's decision, and the reviews still due, as JSON and CSV."""
    cid = request_case(stack, "cmh-admin", "CHG-3010")
    assert lockbox(stack, "ores", "olga", cid, "deny", "not today").status == 200
    emergency = request_case(stack, "hes-admin", "INC-3011", emergency=True)
    pki = stack.stack.pki

    def review(*extra: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "review", "--lockbox", *extra,
             "--admin-url", f"https://localhost:{stack.stack.gateway.admin_port}",
             "--cert", str(pki.client_cert("ores", "carol")),
             "--key", str(pki.client_key("ores", "carol")), "--cacert", str(pki.ca_cert)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    rows = json.loads(review("--json"))["lockbox"]
    denied = next(r for r in rows if r["case_id"] == cid and r["tenant"] == "ores")
    assert (denied["status"], denied["approver"], denied["decision_reason"]) == \
        ("denied", "ores/person/olga", "not today")
    due = next(r for r in rows if r["case_id"] == emergency and r["tenant"] == "ores")
    assert (due["status"], due["review_status"]) == ("skipped", "pending")
    csv_text = review("--format", "csv")
    assert csv_text.splitlines()[0].startswith("case_id,tenant,account,mode,")
    assert f"{cid},ores,cmh-admin,approve,False,denied,ores/person/olga" in csv_text
    due = json.loads(review("--reviews-due", "--json"))["lockbox"]
    assert due and all(r["review_status"] == "pending" for r in due)
    assert any(r["case_id"] == emergency and r["tenant"] == "ores" for r in due)
    # The lockbox is the auditors' and the approvers' to read, not a requester's.
    assert admin(stack, "GET", "/admin/lockbox", who="dave").status == 403
