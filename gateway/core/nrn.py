"""D8: national-register lookups, approved beforehand by the requester's manager.

The report: consultations of the national register are "only for internal
staff, after signing a document explaining why ... validated by the
hierarchical superior". So:

- only a *person* principal of the employer may look a person up (never a
  service principal, never an external tenant such as the IT provider);
- before the lookup, the person asks for it on the admin plane, naming the
  national register number, the purpose (:data:`gateway.core.decide.PURPOSES`)
  and a justification; a principal with the ``manager`` role *of the same
  team* approves it (not the requester: no self-approval); the approval holds
  for :data:`APPROVAL_TTL`;
- the lookup names the approval (``X-Approval``); the gateway checks it is
  approved, unexpired, the requester's own and for this very number, and the
  consultation register records requester, approver, purpose and time.

Pure: the approval comes from the state store, judged here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from gateway.core.model import Caller, Principal

__all__ = ["APPROVAL_HEADER", "APPROVAL_TTL", "MANAGER_ROLE", "Approval", "approval_refusal",
           "lookup_refusal", "request_refusal"]

APPROVAL_HEADER = "X-Approval"
APPROVAL_TTL = timedelta(hours=24)
MANAGER_ROLE = "manager"
# Tenants whose staff are not the employer's: never a lookup (D9).
_EXTERNAL_KINDS = frozenset({"it-provider", "shared-system"})


class Approval(Protocol):
    """What the rules read of a stored approval (gateway.state.NrnApproval)."""

    @property
    def tenant(self) -> str: ...
    @property
    def requester(self) -> str: ...
    @property
    def requester_team(self) -> str: ...
    @property
    def nrn(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def expires_at(self) -> datetime: ...


def principal_name(p: Principal) -> str:
    """How an approval names a principal of its tenant: ``kind/name``."""
    return f"{p.kind}/{p.name}"


def _staff_refusal(caller: Caller) -> tuple[int, str] | None:
    if caller.principal.kind != "person":
        return 403, "person-principal-required"
    if caller.tenant.kind in _EXTERNAL_KINDS:
        return 403, "external-tenant"
    return None


def request_refusal(caller: Caller) -> tuple[int, str] | None:
    """Who may ask for a lookup: a person of the employer, with a team (whose
    manager approves)."""
    refused = _staff_refusal(caller)
    if refused is None and not caller.principal.team:
        return 409, "requester-without-team"
    return refused


def approval_refusal(approver: Caller, approval: Approval,
                     now: datetime) -> tuple[int, str] | None:
    """Who may approve (or deny) a request: a manager of the requester's team
    in the same tenant, not the requester, while the request is pending."""
    p = approver.principal
    if MANAGER_ROLE not in p.roles:
        return 403, "missing-role"
    if approver.tenant.id != approval.tenant:
        return 404, "unknown-approval"  # another tenant's requests do not exist here
    if principal_name(p) == approval.requester:
        return 403, "self-approval"
    if not p.team or p.team != approval.requester_team:
        return 403, "not-the-requester-s-manager"
    if approval.status != "pending":
        return 409, "approval-already-decided"
    if now >= approval.expires_at:
        return 409, "approval-expired"
    return None


def lookup_refusal(caller: Caller, approval: Approval | None, nrn: str,
                   now: datetime) -> tuple[int, str] | None:
    """The lookup of ``nrn`` naming ``approval`` (None: no such approval)."""
    refused = _staff_refusal(caller)
    if refused is not None:
        return refused
    if approval is None:
        return 403, "approval-missing"
    if approval.tenant != caller.tenant.id or approval.requester != principal_name(
            caller.principal):
        return 403, "approval-of-another"
    if approval.nrn != nrn:
        return 403, "approval-for-another-person"
    if approval.status != "approved":
        return 403, "approval-not-approved"
    if now >= approval.expires_at:
        return 403, "approval-expired"
    return None
