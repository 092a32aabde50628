"""Classification labels on upstream responses (D11).

Every document a shared system hands out carries one of four labels:

- ``C1`` public: anyone the route lets in;
- ``C2`` internal: anyone working for the owning organisation, including its
  contracted externals;
- ``C3`` restricted: the C2 audience, and only the listed teams (a team, a
  department);
- ``C4`` confidential: only the named persons.

The upstream states the label in a response header; a route's
:class:`ClassificationPolicy` supplies the default when it states none and
says who belongs to the C3 and C4 audiences. The response has already been
fetched when :func:`may_receive` runs, so a denial withholds it (403; the
reason code goes to the audit event, never to the caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeGuard

from gateway.core.model import PRINCIPAL_KINDS, Caller, Decision

Label = Literal["C1", "C2", "C3", "C4"]
LABELS: tuple[Label, ...] = ("C1", "C2", "C3", "C4")

# A denial withholds a response that was already fetched; the proxy maps it.
DENY_STATUS = 403


def is_label(value: object) -> TypeGuard[Label]:
    return isinstance(value, str) and value in LABELS


def principal_id(caller: Caller) -> str:
    """``tenant/kind/name``: how a C4 policy names a person (or a service).

    The tenant part is the authenticated tenant of the certificate, not a
    field the principal record could get wrong."""
    return f"{caller.tenant.id}/{caller.principal.kind}/{caller.principal.name}"


@dataclass(frozen=True, slots=True)
class ClassificationPolicy:
    """Per route: the label to assume and the C3/C4 audiences (D11)."""

    default: Label = "C2"  # when the upstream sends no label
    c3_teams: frozenset[str] = frozenset()  # teams allowed to receive C3
    c4_principals: frozenset[str] = frozenset()  # "tenant/kind/name" allowed to receive C4
    contracted: frozenset[str] = frozenset()  # tenant ids contracted by the owner (C2)

    def __post_init__(self) -> None:
        # Configuration errors surface at start-up, not on the first response.
        if not is_label(self.default):
            raise ValueError(f"default: {self.default!r} is not one of {', '.join(LABELS)}")
        for team in self.c3_teams:
            if not isinstance(team, str) or not team:
                raise ValueError(f"c3_teams: {team!r} must be a non-empty string")
        for tenant in self.contracted:
            if not isinstance(tenant, str) or not tenant:
                raise ValueError(f"contracted: {tenant!r} must be a non-empty tenant id")
        for entry in self.c4_principals:
            parts = entry.split("/") if isinstance(entry, str) else []
            if len(parts) != 3 or not all(parts) or parts[1] not in PRINCIPAL_KINDS:
                raise ValueError(f"c4_principals: {entry!r} must read tenant/kind/name "
                                 f"with kind one of {', '.join(sorted(PRINCIPAL_KINDS))}")


def classify(header_value: str | None, policy: ClassificationPolicy) -> Label | None:
    """The label a response carries.

    ``None`` header -> the policy's default. A header that is present but not
    one of C1..C4 (case-insensitive, surrounding whitespace ignored) -> ``None``:
    the caller must fail closed rather than guess a label.
    """
    if header_value is None:
        return policy.default
    value = header_value.strip().upper()
    return value if is_label(value) else None


def may_receive(label: Label, caller: Caller, owner_tenants: frozenset[str],
                policy: ClassificationPolicy) -> Decision:
    """May ``caller`` receive a response labelled ``label``?

    ``owner_tenants`` are the tenants owning the records in the response, as
    the response check established them (never what the upstream claims).
    """
    if label == "C1":
        return Decision.allow("classification-c1-public")
    tenant = caller.tenant.id
    internal = tenant in owner_tenants or tenant in policy.contracted
    if label == "C2":
        if internal:
            return Decision.allow("classification-c2-internal")
        return Decision.deny("classification-c2-not-internal", DENY_STATUS)
    if label == "C3":
        if not internal:
            return Decision.deny("classification-c3-not-internal", DENY_STATUS)
        team = caller.principal.team
        if team is None or team not in policy.c3_teams:
            return Decision.deny("classification-c3-not-in-team", DENY_STATUS)
        return Decision.allow("classification-c3-team")
    if label == "C4":
        # D11: only named persons; belonging to the owner is not enough.
        if principal_id(caller) in policy.c4_principals:
            return Decision.allow("classification-c4-named")
        return Decision.deny("classification-c4-not-named", DENY_STATUS)
    # SECURITY: a value that slipped past the type (e.g. from untyped config)
    # is treated as the strictest case: nobody receives it.
    return Decision.deny("classification-unknown-label", DENY_STATUS)
