"""Load and validate the tenant declarations in ``tenants/`` (one TOML file
each, described by the schema gateway.config.TenantFile). Every error names
the file and the key that is wrong."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from gateway.config import PrincipalEntry, TenantFile, validate
from gateway.core.canary import CANARY_KIND, CANARY_NAME, canary_principal
from gateway.core.identifiers import is_valid_gln
from gateway.core.lockbox import reach_problem
from gateway.core.model import Principal, Tenant
from gateway.core.push.trust import PUSH_INTAKES
from gateway.core.quota import Quota
from gateway.errors import ConfigError

KNOWN_ROLES = frozenset(
    {"reader", "meter-operator", "security-admin", "vault-approver", "auditor", "pusher",
     "privileged-user", "customer-portal", "manager", "lockbox-approver"}
)
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True, slots=True)
class TenantRegistry:
    """All declared tenants; looks up the principal a certificate names."""

    tenants: Mapping[str, Tenant]

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self.tenants.values())

    def __len__(self) -> int:
        return len(self.tenants)

    def get(self, tenant_id: str) -> Tenant | None:
        return self.tenants.get(tenant_id)

    def principal(self, tenant_id: str, kind: str, name: str) -> tuple[Tenant, Principal] | None:
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            return None
        principal = tenant.principals.get((kind, name))
        if principal is None:
            if kind == CANARY_KIND and name == CANARY_NAME:
                # D1: every tenant's canary principal, made here, never declared:
                # it reads canary resources only (gateway.core.canary).
                return tenant, canary_principal(tenant.id)
            return None
        return tenant, principal


def check_reach(reach: Mapping[str, Sequence[str]], registry: TenantRegistry,
                source: str) -> None:
    """D7: every tenant a privileged account's reach (``[lockbox.reach]``)
    names is declared in tenants/ (``serve`` and ``config check`` refuse
    a typo that would leave a tenant untold)."""
    for account, entries in reach.items():
        for entry in entries:
            problem = reach_problem(entry, registry.tenants)
            if problem is not None:
                raise ConfigError(f"{source}: lockbox.reach.{account}: {problem}")


def _fail(where: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {key}: {problem}")


def parse_tenant(doc: Mapping[str, Any], where: str, expected_id: str | None = None) -> Tenant:
    """A tenant from a tenant file's document: its schema first
    (gateway.config.TenantFile: keys, types, required), then what needs more
    than one key's type."""
    f = validate(TenantFile, doc, where)
    if not _ID.fullmatch(f.id):
        raise _fail(where, "id", "must match [a-z0-9][a-z0-9-]*")
    if expected_id is not None and f.id != expected_id:
        raise _fail(where, "id", f"must equal the file name ({expected_id!r})")
    if f.gln is not None and not is_valid_gln(f.gln):
        raise _fail(where, "gln", "must be a 13-digit GLN with a valid GS1 check digit")
    prefix = f.ean_prefix
    if prefix is not None and not (prefix.isdigit() and prefix.startswith("54")
                                   and 4 <= len(prefix) <= 10):
        raise _fail(where, "ean_prefix", "must be 4-10 digits starting with 54")
    memberships = {flag for flag in ("cmh_coordinator", "hes_consortium") if getattr(f, flag)}
    principals: dict[tuple[str, str], Principal] = {}
    for i, entry in enumerate(f.principals):
        p = _principal(entry, f.id, where, f"principals[{i}]")
        if p.name == CANARY_NAME:
            # The gateway makes every tenant's canary principal itself.
            raise _fail(where, f"principals[{i}].name",
                        f"{CANARY_NAME!r} is reserved for the gateway's canary prober")
        if any(name == p.name for (_, name) in principals):
            # One certificate file per name under certs/<tenant>/: names are unique.
            raise _fail(where, f"principals[{i}].name", f"duplicate principal {p.name!r}")
        principals[(p.kind, p.name)] = p
    quota = None if f.quota is None else Quota(**f.quota.model_dump())
    if f.push_endpoint is not None and not f.push_endpoint.startswith("https://"):
        raise _fail(where, "push_endpoint", "must be an https:// URL (delivery is mTLS)")
    contact = f.security_contact
    if contact is not None and not (contact.startswith(("mailto:", "https://"))
                                    and len(contact) > len("https://")):
        raise _fail(where, "security_contact", "must be a mailto: or https:// URI")
    intake = f.push_intake
    if intake is not None:
        # D1: the push intake this shared system owns; its pushers may post there only.
        if intake not in PUSH_INTAKES:
            raise _fail(where, "push_intake",
                        f"unknown intake {intake!r} (known: {', '.join(sorted(PUSH_INTAKES))})")
        if f.kind != "shared-system":
            raise _fail(where, "push_intake", "only a shared-system tenant owns a push intake")
    if f.valid_from is not None and f.valid_until is not None \
            and f.valid_until < f.valid_from:
        raise _fail(where, "valid_until", "must not be before valid_from")
    return Tenant(f.id, f.name, f.kind, f.gln, principals, frozenset(memberships),
                  quota=quota, push_endpoint=f.push_endpoint, ean_prefix=prefix,
                  push_intake=intake, security_contact=contact, lockbox=f.lockbox,
                  contract_from=_day_start(f.valid_from),
                  contract_until=_day_start(f.valid_until, 1))


def _day_start(day: date | None, after: int = 0) -> datetime | None:
    """00:00 UTC of ``day`` (or of the day ``after`` days later)."""
    if day is None:
        return None
    return datetime.combine(day + timedelta(days=after), time.min, tzinfo=UTC)


def _principal(entry: PrincipalEntry, tenant: str, where: str, at: str) -> Principal:
    if not _ID.fullmatch(entry.name):
        raise _fail(where, f"{at}.name", "must match [a-z0-9][a-z0-9-]*")
    for role in entry.roles:
        if role not in KNOWN_ROLES:
            raise _fail(where, f"{at}.roles", f"unknown role {role!r} "
                        f"(known: {', '.join(sorted(KNOWN_ROLES))})")
    return Principal(tenant, entry.kind, entry.name, frozenset(entry.roles), entry.team)


def load_tenants(directory: Path) -> TenantRegistry:
    if not directory.is_dir():
        raise ConfigError(f"{directory}: tenants directory not found")
    tenants: dict[str, Tenant] = {}
    intakes: dict[object, Path] = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            with path.open("rb") as fh:
                doc = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        tenant = parse_tenant(doc, str(path), expected_id=path.stem)
        intake = tenant.push_intake
        if intake is not None:
            if intake in intakes:
                # One shared system per intake: its batch ids are its own.
                raise _fail(str(path), "push_intake",
                            f"intake {intake!r} is already owned by {intakes[intake]}")
            intakes[intake] = path
        tenants[tenant.id] = tenant
    if not tenants:
        raise ConfigError(f"{directory}: no tenant files (*.toml)")
    return TenantRegistry(tenants)
