"""Load and validate the tenant declarations in ``tenants/`` (one TOML file
each). Every error names the file and the key that is wrong."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.identifiers import is_valid_gln
from gateway.core.model import PRINCIPAL_KINDS, TENANT_KINDS, Principal, Tenant
from gateway.core.push.trust import PUSH_INTAKES
from gateway.core.quota import Quota
from gateway.errors import ConfigError

KNOWN_ROLES = frozenset(
    {"reader", "meter-operator", "security-admin", "vault-approver", "auditor", "pusher",
     "privileged-user"}
)
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_TENANT_KEYS = frozenset({"id", "name", "kind", "gln", "ean_prefix", "cmh_coordinator",
                          "hes_consortium", "push_endpoint", "push_intake", "quota",
                          "principals"})
_PRINCIPAL_KEYS = frozenset({"kind", "name", "roles", "team"})


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
            return None
        return tenant, principal


def _fail(where: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {key}: {problem}")


def _str(doc: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise _fail(where, key, "is required")
        return None
    if not isinstance(value, str) or not value:
        raise _fail(where, key, "must be a non-empty string")
    return value


def parse_tenant(doc: Mapping[str, Any], where: str, expected_id: str | None = None) -> Tenant:
    unknown = set(doc) - _TENANT_KEYS
    if unknown:
        raise _fail(where, sorted(unknown)[0], "unknown key")
    tid = _str(doc, "id", where)
    assert tid is not None
    if not _ID.fullmatch(tid):
        raise _fail(where, "id", "must match [a-z0-9][a-z0-9-]*")
    if expected_id is not None and tid != expected_id:
        raise _fail(where, "id", f"must equal the file name ({expected_id!r})")
    name = _str(doc, "name", where)
    kind = _str(doc, "kind", where)
    if kind not in TENANT_KINDS:
        raise _fail(where, "kind", f"must be one of {', '.join(sorted(TENANT_KINDS))}")
    gln = _str(doc, "gln", where, required=False)
    if gln is not None and not is_valid_gln(gln):
        raise _fail(where, "gln", "must be a 13-digit GLN with a valid GS1 check digit")
    prefix = _str(doc, "ean_prefix", where, required=False)
    if prefix is not None and not (prefix.isdigit() and prefix.startswith("54")
                                   and 4 <= len(prefix) <= 10):
        raise _fail(where, "ean_prefix", "must be 4-10 digits starting with 54")
    memberships: set[str] = set()
    for flag in ("cmh_coordinator", "hes_consortium"):
        value = doc.get(flag, False)
        if not isinstance(value, bool):
            raise _fail(where, flag, "must be true or false")
        if value:
            memberships.add(flag)
    raw_principals = doc.get("principals")
    if not isinstance(raw_principals, list) or not raw_principals:
        raise _fail(where, "principals", "must be a non-empty array of tables")
    principals: dict[tuple[str, str], Principal] = {}
    for i, raw in enumerate(raw_principals):
        p = _parse_principal(raw, tid, f"{where}: principals[{i}]")
        if any(name == p.name for (_, name) in principals):
            # One certificate file per name under certs/<tenant>/: names are unique.
            raise _fail(where, f"principals[{i}].name", f"duplicate principal {p.name!r}")
        principals[(p.kind, p.name)] = p
    raw_quota = doc.get("quota")
    quota = None if raw_quota is None else _parse_quota(raw_quota, f"{where}: quota")
    endpoint = _str(doc, "push_endpoint", where, required=False)
    if endpoint is not None and not endpoint.startswith("https://"):
        raise _fail(where, "push_endpoint", "must be an https:// URL (delivery is mTLS)")
    intake = _str(doc, "push_intake", where, required=False)
    if intake is not None:
        # D1: the push intake this shared system owns; its pushers may post there only.
        if intake not in PUSH_INTAKES:
            raise _fail(where, "push_intake",
                        f"unknown intake {intake!r} (known: {', '.join(sorted(PUSH_INTAKES))})")
        if kind != "shared-system":
            raise _fail(where, "push_intake", "only a shared-system tenant owns a push intake")
    assert name is not None and kind is not None
    return Tenant(tid, name, kind, gln, principals, frozenset(memberships), quota=quota,
                  push_endpoint=endpoint, ean_prefix=prefix, push_intake=intake)


def _parse_quota(raw: Any, where: str) -> Quota:
    """D1 availability: a tenant's rate, burst and concurrency (noisy neighbours)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(raw) - set(Quota.__dataclass_fields__)
    if unknown:
        raise _fail(where, sorted(unknown)[0], "unknown key")
    base = Quota()
    values: dict[str, Any] = {}
    for name in Quota.__dataclass_fields__:
        value = raw.get(name, getattr(base, name))
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise _fail(where, name, "must be a positive number")
        values[name] = int(value) if isinstance(getattr(base, name), int) else float(value)
    if values["upstream_share"] > 1:
        raise _fail(where, "upstream_share", "must be at most 1")
    return Quota(**values)


def _parse_principal(raw: Any, tenant: str, where: str) -> Principal:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(raw) - _PRINCIPAL_KEYS
    if unknown:
        raise _fail(where, sorted(unknown)[0], "unknown key")
    kind = _str(raw, "kind", where)
    if kind not in PRINCIPAL_KINDS:
        raise _fail(where, "kind", f"must be one of {', '.join(sorted(PRINCIPAL_KINDS))}")
    name = _str(raw, "name", where)
    assert name is not None and kind is not None
    if not _ID.fullmatch(name):
        raise _fail(where, "name", "must match [a-z0-9][a-z0-9-]*")
    roles = raw.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _fail(where, "roles", "must be an array of strings")
    for role in roles:
        if role not in KNOWN_ROLES:
            raise _fail(where, "roles", f"unknown role {role!r} "
                        f"(known: {', '.join(sorted(KNOWN_ROLES))})")
    team = _str(raw, "team", where, required=False)
    return Principal(tenant, kind, name, frozenset(roles), team)


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
