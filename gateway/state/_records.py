"""Records kept in the state store (frozen; times are aware UTC datetimes)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

# (tenant, kind, name): a principal as named by its certificate's URI SAN.
PrincipalKey = tuple[str, str, str]


def record_json(record: Any) -> dict[str, Any]:
    """A record's fields as the admin and data planes answer them: every
    field by its name, times as ISO 8601 text."""
    out: dict[str, Any] = {}
    for field in fields(record):
        value = getattr(record, field.name)
        out[field.name] = value.isoformat() if isinstance(value, datetime) else value
    return out


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    serial: str  # upper-case hex, as ssl's getpeercert() reports it
    tenant: str
    kind: str  # principal kind ("service", "person"); "server" for the gateway's own
    name: str
    issuer_ca: str  # CaRecord.id
    not_before: datetime
    not_after: datetime
    fingerprint: str  # SHA-256 of the DER, hex
    pem: str
    issued_at: datetime
    status: str = "active"  # "active" | "revoked"
    revoked_at: datetime | None = None
    revoke_reason: str | None = None
    replaces: str | None = None  # the predecessor's serial (rotation)
    retire_at: datetime | None = None  # set on a predecessor: revoked at the overlap's end

    @property
    def principal(self) -> PrincipalKey:
        return (self.tenant, self.kind, self.name)


@dataclass(frozen=True, slots=True)
class PrincipalState:
    key: PrincipalKey
    disabled: bool
    changed_at: datetime
    reason: str
    changed_by: str


@dataclass(frozen=True, slots=True)
class CaRecord:
    id: str  # SHA-256 of the CA's SubjectKeyIdentifier, hex, 16 chars
    cert_pem: str
    key_pem: str
    created: datetime
    status: str = "active"  # "active" (issues), "retiring" (trusted only), "retired"
    retire_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    kid: str
    key_pem: str
    created: datetime
    activate_at: datetime  # starts signing (published before that)
    unpublish_at: datetime | None = None  # removed from the JWKS after its last token expired


@dataclass(frozen=True, slots=True)
class BreakGlassCase:
    """One request for a privileged account, from request to review."""

    id: str
    account: str
    requester: str  # "tenant/kind/name"
    requester_team: str
    reason: str
    ticket: str
    duration_s: float
    emergency: bool
    created: datetime
    # pending -> approved | denied; approved -> checked-out -> closed;
    # emergency: checked-out at once. A lease that runs out ends as closed too.
    status: str = "pending"
    approver: str | None = None
    decided_at: datetime | None = None
    checked_out_at: datetime | None = None
    lease_expires_at: datetime | None = None
    closed_at: datetime | None = None
    close_reason: str | None = None
    rotated: bool = False
    review_status: str = "none"  # none | pending | done
    reviewer: str | None = None
    review_notes: str | None = None


@dataclass(frozen=True, slots=True)
class Consultation:
    """One purpose-bound consultation (D8: a register managers review)."""

    incident: str
    at: datetime
    tenant: str
    principal: str
    route: str
    resource: str
    purpose: str
    justification: str
    # D8: the approval the lookup named, and the manager who gave it.
    approval: str = ""
    approver: str = ""


@dataclass(frozen=True, slots=True)
class LockboxEntry:
    """A reached tenant's part in one break-glass case (tenant lockbox, D7):
    told of it, asked for its consent, or told that an emergency skipped it
    (and then its review). A copy of what the tenant is told about the case,
    so the tenant's own listing reads this table only."""

    case_id: str
    tenant: str
    account: str
    requester: str  # "tenant/kind/name"
    requester_team: str
    reason: str
    ticket: str
    emergency: bool
    mode: str  # the tenant's lockbox mode when the case was opened: notify | approve
    created: datetime
    expires_at: datetime | None  # the consent's time limit (approve mode only)
    notice: str  # the incident id of the notification the tenant was sent
    # notified | pending -> approved | denied | expired; skipped (an emergency)
    status: str = "notified"
    approver: str | None = None  # "tenant/kind/name" of the consent or denial
    decided_at: datetime | None = None
    decision_reason: str | None = None
    review_status: str = "none"  # none | pending | done
    reviewer: str | None = None
    reviewed_at: datetime | None = None
    review_notes: str | None = None


@dataclass(frozen=True, slots=True)
class NrnApproval:
    """D8: a national-register lookup asked for beforehand, with its reason,
    and approved (or not) by a manager of the requester's team."""

    id: str
    tenant: str
    requester: str  # "person/<name>" of the tenant
    requester_team: str
    nrn: str
    purpose: str
    justification: str
    created: datetime
    expires_at: datetime
    status: str = "pending"  # pending | approved | denied
    approver: str | None = None
    decided_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PendingAction:
    """An admin action waiting for a second security admin (D6): the request,
    and once decided, the decision and what it produced."""

    id: str
    action: str  # "certs-issue", "certs-rotate", "principal-enable", ..., "vault-rekey"
    target: str  # what the action is about, as its audit event names it
    principal: str  # "tenant/kind/name" the action gives or takes a credential of, or ""
    params: str  # JSON: what the action needs (CSR, lifetime, overlap, ...)
    reason: str
    requester: str  # "tenant/kind/name"
    requester_team: str
    rule: str  # the duties rule that asked for a second person
    created: datetime
    expires_at: datetime
    status: str = "pending"  # gateway.core.duties.TRANSITIONS
    approver: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    result: str | None = None  # JSON: the outcome (the certificate, the new CA, ...)
