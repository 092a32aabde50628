"""The schema of a tenant file (``tenants/<id>.toml``), written once like
``gateway.toml``'s: gateway.tenants validates each file against it, then makes
the checks that need more than a key's type (the id matches the file name, a
GLN's check digit, known roles, one owner per push intake).

Every key of a tenant file is re-read on SIGHUP.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from gateway.config._fields import RELOADED, NonEmpty, PositiveInt, PositiveNumber, Table
from gateway.config._fields import setting as _setting
from gateway.core.model import PRINCIPAL_KINDS, TENANT_KINDS
from gateway.core.quota import Quota

if TYPE_CHECKING:
    TenantKind = str
    PrincipalKind = str
else:  # the choices as the core declares them
    TenantKind = Literal[tuple(sorted(TENANT_KINDS))]
    PrincipalKind = Literal[tuple(sorted(PRINCIPAL_KINDS))]


def setting(default: Any = ..., doc: str = "", *, shown: str | None = None) -> Any:
    return _setting(default, doc, sighup=RELOADED, shown=shown)


class PrincipalEntry(Table):
    kind: PrincipalKind = setting(doc="service (a machine) or person")
    name: NonEmpty = setting(doc="Its name in certificates: [a-z0-9][a-z0-9-]*, unique in "
                             "the tenant")
    roles: list[NonEmpty] = setting([], "Roles (reader, meter-operator, security-admin, "
                                    "vault-approver, auditor, pusher, privileged-user, "
                                    "lockbox-approver)")
    team: NonEmpty | None = setting(None, "Team, for the duties that need two teams",
                                    shown="none")


_QUOTA = Quota()


class QuotaTable(Table):
    rate_per_s: PositiveNumber = setting(_QUOTA.rate_per_s, "Sustained requests per second")
    burst: PositiveInt = setting(_QUOTA.burst, "Bucket size")
    concurrency: PositiveInt = setting(_QUOTA.concurrency, "Requests in flight at once")
    upstream_share: Annotated[float, Field(gt=0, le=1)] = setting(
        _QUOTA.upstream_share, "At most this part of one upstream's connection pool")


class TenantFile(Table):
    """``tenants/<id>.toml``."""

    id: NonEmpty = setting(doc="Equal to the file name: [a-z0-9][a-z0-9-]*")
    name: NonEmpty = setting(doc="The company's name")
    kind: TenantKind = setting(doc="What the tenant is")
    gln: NonEmpty | None = setting(None, "13-digit GS1 Global Location Number", shown="none")
    ean_prefix: NonEmpty | None = setting(None, "EAN prefix of its access points: 4-10 "
                                          "digits starting with 54", shown="none")
    cmh_coordinator: bool = setting(False, "Coordinates Connect My Home requests")
    hes_consortium: bool = setting(False, "Member of the HES consortium")
    push_endpoint: NonEmpty | None = setting(None, "https:// URL its pushed data and its "
                                             "breach notifications are delivered to (mTLS)",
                                             shown="none")
    push_intake: NonEmpty | None = setting(None, "The push intake a shared-system tenant "
                                           "owns: hes or cmh", shown="none")
    security_contact: NonEmpty | None = setting(
        None, "Who is told of a breach of its data: a mailto: or https:// URI (as a "
        "security.txt Contact); named in its breach notifications", shown="none")
    lockbox: Literal["notify", "approve"] = setting(
        "notify", "D7: a break-glass case on a privileged account reaching this tenant "
        "([lockbox.reach]) notifies it; with approve, the checkout also needs the consent "
        "of one of its lockbox-approver principals (POST /lockbox/{case}/approve), and an "
        "emergency that skipped it needs the tenant's review afterwards")
    valid_from: date | None = setting(None, "D9: first day of its contract (a TOML date, "
                                      "UTC); before it every certificate is refused",
                                      shown="none")
    valid_until: date | None = setting(None, "D9: last day of its contract (a TOML date, "
                                       "UTC, inclusive); after it every certificate is "
                                       "refused", shown="none")
    quota: QuotaTable | None = setting(None, "Its rate, burst and concurrency",
                                       shown="the defaults below")
    principals: Annotated[list[PrincipalEntry], Field(min_length=1)] = setting(
        doc="Its certificate holders ([[principals]])")
