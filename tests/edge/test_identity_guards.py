"""From a verified certificate to a caller (gateway/edge/_identity.py), each
guard pinned by its outcome over real mTLS on 127.0.0.1: the data plane's
harness (tests/dataplane/harness.py, certificates from the project's own
CA) with the resolver it builds, or with one built here where the test is
about how the resolver is built. What a refusal says is read where the
gateway says it: the answer's status and the request's audit event."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gateway.core.model import Principal, Tenant
from gateway.edge import CallerResolver, HttpRequest
from gateway.errors import RequestRefused
from gateway.tenants import TenantRegistry, load_tenants
from tests.dataplane.harness import ORES_METER, REPO, TRUST_DOMAIN, Plane, Start
from tests.dataplane.harness import plane as plane  # the fixture, shared with tests/dataplane

METER = f"/hes/meters/{ORES_METER}"
ORES_API = ("ores", "service", "api")


def event_of(p: Plane, incident: str) -> dict[str, Any]:
    [event] = [e for e in p.requests() if e["incident"] == incident]
    return event


async def get(p: Plane, session: Any = None) -> tuple[int, str]:
    """One GET of ORES's own meter: the status and the incident id."""
    async with (session or p.session).get(f"{p.url}{METER}") as resp:
        await resp.read()
        return resp.status, resp.headers["X-Request-Id"]


class CountingRegistry(TenantRegistry):
    """The repository's tenants; counts the principal lookups a certificate
    needs (the resolver's per-connection cache is what keeps them at one)."""

    lookups: list[tuple[str, str, str]]

    def principal(self, tenant_id: str, kind: str, name: str) -> tuple[Tenant, Principal] | None:
        self.lookups.append((tenant_id, kind, name))
        return super().principal(tenant_id, kind, name)


def counting_registry() -> CountingRegistry:
    registry = CountingRegistry(load_tenants(REPO / "tenants").tenants)
    object.__setattr__(registry, "lookups", [])  # a frozen dataclass
    return registry


# -- certificates that name no declared principal ---------------------------------

async def test_a_certificate_of_an_undeclared_principal_is_refused(plane: Start) -> None:
    """D1: a certificate our CA issued for a principal no tenant file declares
    reaches nothing: 403, audited as unknown-principal, nothing forwarded."""
    p = await plane()
    stranger = await p.client("ores", "service", "nobody")
    status, incident = await get(p, stranger)
    assert status == 403
    event = event_of(p, incident)
    assert (event["reason"], event["status"], event["tenant"]) == (
        "unknown-principal", 403, "unknown")
    assert p.upstream.sent == []


async def test_a_certificate_of_another_trust_domain_is_refused_with_its_reason(
        plane: Start) -> None:
    """D1: the URI SAN names a principal of a trust domain that is not the
    gateway's: 403, and the audit event says why (the reader's own reason,
    not a generic one)."""
    p = await plane()
    foreign = CallerResolver(load_tenants(REPO / "tenants"), "other-grid.test")
    p.data_plane.resolver = foreign
    status, incident = await get(p)
    assert status == 403
    event = event_of(p, incident)
    assert (event["reason"], event["status"], event["tenant"]) == (
        "foreign-principal-uri", 403, "unknown")
    assert p.upstream.sent == []


async def test_a_resolver_built_without_peers_reads_certificates_of_its_trust_domain(
        plane: Start) -> None:
    """A resolver given no shared ``Peers`` reads each connection's
    certificate itself, for its own trust domain: the declared caller is
    served, as through the shared reading."""
    p = await plane()
    own = CallerResolver(load_tenants(REPO / "tenants"), TRUST_DOMAIN)
    p.data_plane.resolver = own
    for _ in range(2):
        status, incident = await get(p)
        assert status == 200
    assert own.peers is not p.peers and own.peers.reads == 1  # once per connection
    assert event_of(p, incident)["tenant"] == "ores"


async def test_the_resolver_and_the_connection_book_share_one_reading(plane: Start) -> None:
    """Given the server's ``Peers``, the resolver reads certificates through
    it: one parse per connection for the book and the resolver together."""
    p = await plane()
    resolver = p.data_plane.resolver
    assert resolver.peers is p.peers
    assert (await get(p))[0] == 200
    assert p.peers.reads == 1


# -- once per connection, checked per request ----------------------------------------

async def test_a_connection_resolves_its_caller_once(plane: Start) -> None:
    """One TLS connection carries one certificate: its principal is looked
    up once, however many requests the keep-alive connection carries; a new
    connection looks it up again."""
    registry = counting_registry()
    p = await plane()
    p.data_plane.resolver.replace_registry(registry)
    for _ in range(3):
        assert (await get(p))[0] == 200
    assert registry.lookups == [ORES_API]
    other = await p.client("ores", "service", "field-ops")
    assert (await get(p, other))[0] == 200
    assert registry.lookups == [ORES_API, ("ores", "service", "field-ops")]


async def test_new_tenant_declarations_reach_connections_already_open(plane: Start) -> None:
    """D8: tenant files reloaded without ORES (its contract ended, its
    declarations withdrawn): a keep-alive connection opened before is
    refused from its next request on, as unknown-principal; declared again,
    it is served again."""
    p = await plane()
    resolver = p.data_plane.resolver
    full = load_tenants(REPO / "tenants")
    assert (await get(p))[0] == 200
    resolver.replace_registry(TenantRegistry(
        {tid: t for tid, t in full.tenants.items() if tid != "ores"}))
    status, incident = await get(p)
    assert status == 403
    resolver.replace_registry(full)
    assert (await get(p))[0] == 200
    assert len(p.upstream.sent) == 2
    assert event_of(p, incident)["reason"] == "unknown-principal"


async def test_a_disabled_principal_is_refused_on_its_open_connection(plane: Start) -> None:
    """D8: the revocation check is asked about the connection's principal,
    not only its certificate: a leaver's principal disabled after connect is
    refused on the keep-alive connection already open (403
    principal-disabled, audited with who it is), and another principal of
    the same tenant is still served."""
    disabled: set[tuple[str, str, str]] = set()
    p = await plane()
    p.data_plane.resolver = CallerResolver(
        load_tenants(REPO / "tenants"), TRUST_DOMAIN, peers=p.peers,
        revocation=lambda serial, key: "principal-disabled" if key in disabled else None)
    field_ops = await p.client("ores", "service", "field-ops")
    assert (await get(p))[0] == 200
    disabled.add(ORES_API)
    status, incident = await get(p)
    assert status == 403
    assert (await get(p, field_ops))[0] == 200
    event = event_of(p, incident)
    assert (event["reason"], event["tenant"], event["cert_serial"]) == (
        "principal-disabled", "ores", p.client_serial)


# -- a request whose connection is gone --------------------------------------------

class GoneRequest:
    """A request read off a connection that has since closed: aiohttp's and
    the lean server's requests give ``transport`` None from then on."""

    transport = None


def test_a_request_without_its_connection_is_refused() -> None:
    """No connection, no certificate: 403 no-transport, never a caller."""
    resolver = CallerResolver(load_tenants(REPO / "tenants"), TRUST_DOMAIN)
    with pytest.raises(RequestRefused) as refused:
        resolver.resolve(cast(HttpRequest, GoneRequest()))
    assert (refused.value.status, refused.value.reason) == (403, "no-transport")
