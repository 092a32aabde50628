"""D8 over real sockets: a national-register lookup is "only for internal
staff, after signing a document explaining why ... validated by the
hierarchical superior". A person of the employer asks on the admin plane, a
manager of the same team approves beforehand (never her own request, never a
manager of another team), the lookup names the approval, and the register
records requester, approver, purpose and time. Service principals and
external tenants never look anyone up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Response, RunningStack, start_stack
from .test_admin_cli import gateway
from .test_credentials import admin


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("nrn"))
    yield gw
    gw.stop()


def employee(gw: RunningStack, employer: str = "ores", n: int = 0) -> str:
    return [p["nrn"] for p in gw.stack.dataset.persons if p["employer"] == employer][n]


def ask(gw: RunningStack, nrn: str, who: str = "erik", tenant: str = "ores") -> Response:
    return admin(gw, "POST", "/admin/nrn-approvals",
                 {"nrn": nrn, "purpose": "hr-administration", "justification": "HR-2026-17",
                  "reason": "payroll correction"}, who=who, tenant=tenant)


def decide(gw: RunningStack, approval: str, who: str, verdict: str = "approve") -> Response:
    return admin(gw, "POST", f"/admin/nrn-approvals/{approval}/{verdict}",
                 {"reason": "signed document seen"}, who=who)


def lookup(gw: RunningStack, nrn: str, approval: str | None, who: str = "erik") -> Response:
    headers = {} if approval is None else {"X-Approval": approval}
    return gw.client("ores", who).get(f"/itsm/persons/{nrn}", headers=headers)


def reason_of(gw: RunningStack, resp: Response) -> Any:
    return next(e for e in gw.audit_events() if e.get("incident") == resp.json["incident"])[
        "reason"]


def test_ask_approve_then_look_up(stack: RunningStack) -> None:
    nrn = employee(stack)
    asked = ask(stack, nrn)
    assert asked.status == 201, asked.body
    approval = asked.json["id"]
    assert asked.json["status"] == "pending" and asked.json["requester"] == "person/erik"
    stack.clear_sim_logs()
    early = lookup(stack, nrn, approval)
    assert early.status == 403 and reason_of(stack, early) == "approval-not-approved"
    assert stack.sim_log("itsm") == []
    ok = decide(stack, approval, "hanna")
    assert ok.status == 200, ok.body
    assert ok.json["status"] == "approved" and ok.json["approver"] == "person/hanna"
    found = lookup(stack, nrn, approval)
    assert found.status == 200 and found.json["nrn"] == nrn
    entry = stack.stack.gateway.store.consultations(tenant="ores")[-1]
    assert (entry.incident, entry.principal, entry.resource, entry.purpose,
            entry.justification, entry.approval, entry.approver) == (
        found.headers["x-request-id"], "person/erik", nrn, "hr-administration", "HR-2026-17",
        approval, "person/hanna")
    listed = admin(stack, "GET", "/admin/consultations?tenant=ores", who="carol")
    row = next(r for r in listed.json["consultations"] if r["incident"] == entry.incident)
    assert (row["approval"], row["approver"]) == (approval, "person/hanna")
    # The approval is for that person, asked by erik: not for another, not for hanna.
    other = lookup(stack, employee(stack, n=1), approval)
    assert other.status == 403 and reason_of(stack, other) == "approval-for-another-person"
    theirs = lookup(stack, nrn, approval, who="hanna")
    assert theirs.status == 403 and reason_of(stack, theirs) == "approval-of-another"
    # Decided once.
    assert decide(stack, approval, "hanna", "deny").status == 409


@pytest.mark.parametrize(("approver", "status", "reason"), [
    ("erik", 403, "missing-role"),  # not a manager
    ("ingrid", 403, "not-the-requester-s-manager"),  # a manager of another team
])
def test_only_the_requester_s_manager_approves(stack: RunningStack, approver: str,
                                                status: int, reason: str) -> None:
    approval = ask(stack, employee(stack)).json["id"]
    refused = decide(stack, approval, approver)
    assert refused.status == status, refused.body
    assert lookup(stack, employee(stack), approval).status == 403


def test_no_self_approval(stack: RunningStack) -> None:
    asked = ask(stack, employee(stack), who="hanna")
    assert asked.status == 201
    refused = decide(stack, asked.json["id"], "hanna")
    assert refused.status == 403, refused.body
    assert lookup(stack, employee(stack), asked.json["id"], who="hanna").status == 403


def test_a_denied_request_allows_nothing(stack: RunningStack) -> None:
    approval = ask(stack, employee(stack)).json["id"]
    assert decide(stack, approval, "hanna", "deny").json["status"] == "denied"
    resp = lookup(stack, employee(stack), approval)
    assert resp.status == 403 and reason_of(stack, resp) == "approval-not-approved"


def test_no_lookup_without_an_approval(stack: RunningStack) -> None:
    for approval in (None, "nrn-0000000000000000"):
        resp = lookup(stack, employee(stack), approval)
        assert resp.status == 403 and reason_of(stack, resp) == "approval-missing"


def test_service_principals_and_externals_never_look_up(stack: RunningStack) -> None:
    nrn = employee(stack)
    approval = ask(stack, nrn).json["id"]
    assert decide(stack, approval, "hanna").status == 200
    svc = stack.client("ores").get(f"/itsm/persons/{nrn}", headers={"X-Approval": approval})
    assert svc.status == 403 and reason_of(stack, svc) == "person-principal-required"
    assert admin(stack, "POST", "/admin/nrn-approvals",
                 {"nrn": nrn, "purpose": "hr-administration", "justification": "HR-1",
                  "reason": "x"}, who="api").status == 403
    external = admin(stack, "POST", "/admin/nrn-approvals",
                     {"nrn": nrn, "purpose": "hr-administration", "justification": "HR-1",
                      "reason": "x"}, who="erin", tenant="engie-it")
    assert external.status == 403, external.body


@pytest.mark.parametrize(("body", "status"), [
    ({"nrn": "85073003327"}, 400),  # check digits
    ({"purpose": "curiosity"}, 400),
    ({"justification": "x"}, 400),
])
def test_a_request_states_a_valid_number_purpose_and_reference(
        stack: RunningStack, body: dict[str, str], status: int) -> None:
    doc = {"nrn": employee(stack), "purpose": "hr-administration",
           "justification": "HR-2026-17", "reason": "r", **body}
    assert admin(stack, "POST", "/admin/nrn-approvals", doc, who="erik").status == status


def test_a_manager_lists_the_tenant_s_requests_only(stack: RunningStack) -> None:
    ask(stack, employee(stack))
    listed = admin(stack, "GET", "/admin/nrn-approvals", who="hanna")
    assert listed.status == 200
    assert listed.json["approvals"] and all(a["tenant"] == "ores"
                                            for a in listed.json["approvals"])


def test_the_cli_asks_approves_and_lists(stack: RunningStack, tmp_path: Path) -> None:
    """The same flow through `gateway nrn ...` (the admin CLI)."""
    nrn = employee(stack, n=1)
    asked = json.loads(gateway(stack, "nrn", "request", "--nrn", nrn, "--purpose",
                               "legal-obligation", "--justification", "LEGAL-7",
                               "--reason", "court order", who="erik", cwd=tmp_path))
    assert asked["status"] == "pending"
    decided = json.loads(gateway(stack, "nrn", "approve", asked["id"], "--reason", "signed",
                                 who="hanna", cwd=tmp_path))
    assert decided["status"] == "approved"
    listed = json.loads(gateway(stack, "nrn", "list", "--json", who="hanna", cwd=tmp_path))
    assert asked["id"] in {a["id"] for a in listed["approvals"]}
    assert lookup(stack, nrn, asked["id"]).status == 200
