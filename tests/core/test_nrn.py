"""D8: who may ask, approve and use a national-register lookup approval
(gateway.core.nrn), each rule on its own."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.model import Caller, Principal, Tenant
from gateway.core.nrn import approval_refusal, lookup_refusal, request_refusal

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
NRN = "85073003328"


def who(name: str, roles: set[str], team: str | None = "hr", kind: str = "person",
        tenant: str = "ores", tenant_kind: str = "dso") -> Caller:
    p = Principal(tenant, kind, name, frozenset(roles), team)
    return Caller(Tenant(tenant, tenant, tenant_kind, principals={(kind, name): p}), p)


@dataclass(frozen=True)
class Approval:
    tenant: str = "ores"
    requester: str = "person/erik"
    requester_team: str = "hr"
    nrn: str = NRN
    status: str = "approved"
    expires_at: datetime = NOW + timedelta(hours=1)


ERIK = who("erik", {"reader"})
HANNA = who("hanna", {"manager"})


@pytest.mark.parametrize(("caller", "refused"), [
    (ERIK, None),
    (who("api", {"reader"}, kind="service"), (403, "person-principal-required")),
    (who("erin", {"reader"}, tenant="engie-it", tenant_kind="it-provider"),
     (403, "external-tenant")),
    (who("erik", {"reader"}, team=None), (409, "requester-without-team")),
])
def test_who_may_ask(caller: Caller, refused: tuple[int, str] | None) -> None:
    assert request_refusal(caller) == refused


@pytest.mark.parametrize(("approver", "approval", "refused"), [
    (HANNA, Approval(status="pending"), None),
    (who("erik", {"manager"}), Approval(status="pending"), (403, "self-approval")),
    (who("ingrid", {"manager"}, team="grid-ops"), Approval(status="pending"),
     (403, "not-the-requester-s-manager")),
    (who("nora", {"manager"}, team=None), Approval(status="pending"),
     (403, "not-the-requester-s-manager")),
    (who("otto", {"reader"}), Approval(status="pending"), (403, "missing-role")),
    (who("hanna", {"manager"}, tenant="fluvius"), Approval(status="pending"),
     (404, "unknown-approval")),
    (HANNA, Approval(status="approved"), (409, "approval-already-decided")),
    (HANNA, Approval(status="pending", expires_at=NOW), (409, "approval-expired")),
])
def test_who_may_approve(approver: Caller, approval: Approval,
                         refused: tuple[int, str] | None) -> None:
    assert approval_refusal(approver, approval, NOW) == refused


@pytest.mark.parametrize(("caller", "approval", "nrn", "refused"), [
    (ERIK, Approval(), NRN, None),
    (ERIK, None, NRN, (403, "approval-missing")),
    (ERIK, Approval(), "01020312345", (403, "approval-for-another-person")),
    (who("hanna", {"reader"}), Approval(), NRN, (403, "approval-of-another")),
    (who("erik", {"reader"}, tenant="fluvius"), Approval(), NRN, (403, "approval-of-another")),
    (ERIK, Approval(status="pending"), NRN, (403, "approval-not-approved")),
    (ERIK, Approval(status="denied"), NRN, (403, "approval-not-approved")),
    (ERIK, Approval(expires_at=NOW), NRN, (403, "approval-expired")),
    (who("erik", {"reader"}, kind="service"), Approval(requester="service/erik"), NRN,
     (403, "person-principal-required")),
    (who("erin", {"reader"}, tenant="engie-it", tenant_kind="it-provider"),
     replace(Approval(), tenant="engie-it", requester="person/erin"), NRN,
     (403, "external-tenant")),
])
def test_what_a_lookup_needs(caller: Caller, approval: Approval | None, nrn: str,
                             refused: tuple[int, str] | None) -> None:
    assert lookup_refusal(caller, approval, nrn, NOW) == refused
