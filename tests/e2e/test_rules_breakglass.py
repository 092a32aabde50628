"""Break-glass refusals on the admin plane (D6, D7): each one a problem
document and an audit event, and the case left as it was. The policy's
guards one by one are in ``tests/vault/test_breakglass_rules.py``; here the same
refusals are seen the way a person sees them, over mTLS.

One stack for the module; each test opens cases of its own and never checks
an account out, so they do not disturb one another.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.vault._breakglass import BreakGlassPolicy

from .conftest import Response, RunningStack, start_stack
from .test_credentials import admin

REQ = {"account": "itsm-support", "reason": "platform down", "ticket": "CHG-4242",
       "duration_s": 600}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("breakglass"))
    yield gw
    gw.stop()


def as_(gw: RunningStack, who: str, path: str, body: Any) -> Response:
    return admin(gw, "POST", path, body, who=who, tenant="ores")


def case_of(gw: RunningStack, cid: str) -> dict[str, Any]:
    cases = admin(gw, "GET", "/admin/breakglass", who="carol").json["cases"]
    return next(c for c in cases if c["id"] == cid)


def refusal(gw: RunningStack, resp: Response, status: int, action: str, reason: str,
            actor: str) -> None:
    """A problem document with an incident id, and the refusal in the audit log."""
    assert resp.status == status, resp.body
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json["status"] == status and resp.json["incident"]
    events = [e for e in gw.audit_events() if e.get("event") == "admin"
              and e.get("action") == action and e.get("actor") == f"ores/person/{actor}"]
    assert events and events[-1]["outcome"] == "refused", events
    assert events[-1]["detail"] == reason


def new_case(gw: RunningStack, who: str = "dave", **extra: Any) -> str:
    resp = as_(gw, who, "/admin/breakglass/requests", {**REQ, **extra})
    assert resp.status == 201, resp.body
    return str(resp.json["id"])


def test_a_requester_who_also_approves_cannot_approve_their_own_case(
        stack: RunningStack) -> None:
    """grace holds privileged-user and vault-approver. With the other-team
    rule switched off (a policy the gateway allows), only the self-approval
    rule stands between her and her own approval."""
    bg = stack.stack.gateway.breakglass
    before = bg.policy
    bg.policy = BreakGlassPolicy(approver_other_team=False)
    try:
        cid = new_case(stack, "grace", ticket="CHG-4243")
        resp = as_(stack, "grace", f"/admin/breakglass/requests/{cid}/approve", {"reason": "me"})
        refusal(stack, resp, 403, "breakglass-approve", "self-approval", "grace")
        assert case_of(stack, cid)["status"] == "pending"
        assert case_of(stack, cid)["approver"] in (None, "")
        # heidi, of another team, may: the refusal was about who asked.
        ok = as_(stack, "heidi", f"/admin/breakglass/requests/{cid}/approve", {"reason": "ok"})
        assert ok.status == 200 and ok.json["approver"] == "ores/person/heidi"
    finally:
        bg.policy = before


def test_a_pending_case_is_not_checked_out(stack: RunningStack) -> None:
    cid = new_case(stack, ticket="CHG-4244")
    resp = as_(stack, "dave", f"/admin/breakglass/requests/{cid}/checkout", {"reason": "go"})
    refusal(stack, resp, 409, "breakglass-checkout", "not-approved", "dave")
    assert "credential" not in resp.json and "password" not in resp.body.decode()
    assert case_of(stack, cid)["status"] == "pending"


def test_approval_needs_the_vault_approver_role(stack: RunningStack) -> None:
    """dave may use the break-glass routes (he requests) but holds no approver
    role; grace's case stays pending whatever he sends."""
    cid = new_case(stack, "grace", ticket="CHG-4245")
    resp = as_(stack, "dave", f"/admin/breakglass/requests/{cid}/approve", {"reason": "ok"})
    refusal(stack, resp, 403, "breakglass-approve", "missing-role", "dave")
    assert case_of(stack, cid)["status"] == "pending"


def test_a_request_needs_the_privileged_user_role(stack: RunningStack) -> None:
    before = {c["id"] for c in admin(stack, "GET", "/admin/breakglass", who="carol")
              .json["cases"]}
    resp = as_(stack, "heidi", "/admin/breakglass/requests", {**REQ, "ticket": "CHG-4246"})
    refusal(stack, resp, 403, "breakglass-request", "missing-role", "heidi")
    after = {c["id"] for c in admin(stack, "GET", "/admin/breakglass", who="carol")
             .json["cases"]}
    assert after == before


@pytest.mark.parametrize("ticket,reason", [("   ", "ticket-required"),
                                           ("", "field-missing"),
                                           (None, "field-missing")])
def test_a_request_needs_a_ticket(stack: RunningStack, ticket: str | None,
                                  reason: str) -> None:
    before = len(admin(stack, "GET", "/admin/breakglass", who="carol").json["cases"])
    body = {k: v for k, v in REQ.items() if k != "ticket"}
    if ticket is not None:
        body["ticket"] = ticket
    for emergency in (False, True):
        resp = as_(stack, "dave", "/admin/breakglass/requests", {**body, "emergency": emergency})
        refusal(stack, resp, 400, "breakglass-request", reason, "dave")
    assert len(admin(stack, "GET", "/admin/breakglass", who="carol").json["cases"]) == before
    soc = (stack.stack.work_dir / "soc.jsonl").read_text()
    assert "breakglass-emergency" not in soc  # no alert for a request that never was


def test_refusals_leave_the_password_unseen(stack: RunningStack) -> None:
    audit = (stack.stack.work_dir / "audit.jsonl").read_text()
    password = stack.stack.gateway.vault.get("account/itsm-support").decode()
    assert password not in audit
