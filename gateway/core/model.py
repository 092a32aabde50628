"""Frozen domain objects the pure decision core works on.

Nothing here does I/O or imports aiohttp: the request decision, the response
check and the path rules are functions of these values plus an injected
``now`` (STYLE.md, sans-IO core).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import NamedTuple

from gateway.core.quota import Quota

TENANT_KINDS = frozenset(
    {
        "dso",
        "water",
        "telecom",
        "supplier",
        "social-welfare",
        "clearing-house",
        "it-provider",
        "shared-system",
    }
)
PRINCIPAL_KINDS = frozenset({"service", "person"})


@dataclass(frozen=True, slots=True)
class Principal:
    """A service or a person of a tenant, named by a certificate's URI SAN."""

    tenant: str
    kind: str  # "service" | "person"
    name: str
    roles: frozenset[str] = frozenset()
    team: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tenant, self.kind, self.name)


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    kind: str
    gln: str | None = None
    principals: Mapping[tuple[str, str], Principal] = field(default_factory=dict)
    # Groups a route may require (``Route.member_of``): "hes_consortium" (D6:
    # the HES is shared by the consortium's members only), "cmh_coordinator"
    # (D1: a Connect My Home coordinator may book for other operators).
    memberships: frozenset[str] = frozenset()
    quota: Quota | None = None  # D1 availability: its own rate; None: the default
    push_endpoint: str | None = None  # where its pushed data is delivered (D5), https://
    ean_prefix: str | None = None  # its EAN-18 prefix (the demo dataset draws from it)
    push_intake: str | None = None  # D1: the push intake this shared system owns
    # Who is told of a breach of its data (a mailto: or https: URI, as a
    # security.txt Contact, RFC 9116 §2.5.3), in its breach notifications.
    security_contact: str | None = None
    # D7: "notify" (told of break-glass cases on accounts reaching it) or
    # "approve" (its lockbox-approver must also consent before a checkout).
    lockbox: str = "notify"
    # D9: a provider or partner works for the operators only while its contract
    # runs: [contract_from, contract_until), None meaning unbounded.
    contract_from: datetime | None = None
    contract_until: datetime | None = None

    @property
    def contract_bounded(self) -> bool:
        return self.contract_from is not None or self.contract_until is not None

    def contract_refusal(self, now: datetime) -> str | None:
        """Why none of this tenant's certificates may be used at ``now``, or None."""
        if self.contract_from is not None and now < self.contract_from:
            return "tenant-contract-not-started"
        if self.contract_until is not None and now >= self.contract_until:
            return "tenant-contract-ended"
        return None

    @property
    def cmh_coordinator(self) -> bool:
        return "cmh_coordinator" in self.memberships


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the tenant and principal the certificate maps to."""

    tenant: Tenant
    principal: Principal
    cert_serial: str = ""
    cert_fingerprint: str = ""
    # The tenant's id, read on every request: a slot, not a property (a
    # property is a Python call, about 1,500 instructions a read).
    tenant_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenant_id", self.tenant.id)


class Verdict(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"

    def __init__(self, value: str) -> None:
        # Read by Decision.allowed through a C getter (no Python frame).
        self.allows = value == "allow"


class Decision(NamedTuple):
    """Outcome of a pure check. ``reason`` is a stable machine code that goes
    to the audit event and the ``reason`` metric label, never to the caller.
    A named tuple, not a frozen dataclass: built on every request, it costs
    0.3 µs instead of 0.55 (decide()'s per-request budget, bench/README.md)."""

    verdict: Verdict
    reason: str
    status: int = 200
    # Resource ids the decision was about (audit only; never a metric label).
    resources: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        """Whether the verdict is ALLOW (replaced below by the same property
        with a getter in C)."""
        return self.verdict is Verdict.ALLOW

    # The factories build the tuple in C: a named tuple's own constructor is
    # a Python function (one more frame, about 1,500 instructions a call).
    @classmethod
    def allow(cls, reason: str, resources: tuple[str, ...] = ()) -> Decision:
        return tuple.__new__(cls, (Verdict.ALLOW, reason, 200, resources))

    @classmethod
    def deny(cls, reason: str, status: int = 403, resources: tuple[str, ...] = ()) -> Decision:
        return tuple.__new__(cls, (Verdict.DENY, reason, status, resources))


# Read four times a request: with its getter in C, a read makes no Python
# frame (about 600 instructions instead of 1,500). Same answer as the method.
Decision.allowed = property(attrgetter("verdict.allows"))  # type: ignore[method-assign,assignment]


@dataclass(frozen=True, slots=True)
class Relation:
    """A time-bounded tuple ``(kind, resource id) -> (tenant, relation)``.

    ``valid_from`` is inclusive, ``valid_to`` exclusive; ``None`` means open.
    """

    kind: str
    resource_id: str
    tenant: str
    relation: str
    valid_from: datetime | None = None
    valid_to: datetime | None = None

    def holds_at(self, at: datetime) -> bool:
        if self.valid_from is not None and at < self.valid_from:
            return False
        return not (self.valid_to is not None and at >= self.valid_to)

    def covers(self, start: datetime, end: datetime) -> bool:
        """True when the whole window ``[start, end)`` lies inside this relation."""
        if self.valid_from is not None and start < self.valid_from:
            return False
        return not (self.valid_to is not None and end > self.valid_to)
