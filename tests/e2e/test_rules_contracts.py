"""D9: a provider or partner works for the operators only while its contract
runs (``valid_from``/``valid_until`` in its tenant file). Outside it every
certificate of the tenant is refused at the request, keep-alive connections
included, and the admin plane issues none for it; the contract's end is a
metric with an alert 30 days ahead."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.pki import spiffe_uri
from gateway.pki._issuance import make_key_and_csr
from gateway.tenants import TenantRegistry

from .conftest import RunningStack, start_stack
from .test_credentials import admin

PROVIDER = "engie-it"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("contracts"))
    yield gw
    gw.stop()


def contract(gw: RunningStack, **bounds: Any) -> None:
    """The provider's contract window as a reloaded tenant file would set it."""
    gateway = gw.stack.gateway
    tenants = dict(gateway.registry.tenants)
    tenants[PROVIDER] = dataclasses.replace(tenants[PROVIDER], **bounds)
    gateway._swap(TenantRegistry(tenants), gateway._relations)


def test_the_demo_provider_s_contract_ends_on_31_december_2027(stack: RunningStack) -> None:
    tenant = stack.stack.registry.tenants[PROVIDER]
    assert tenant.contract_until == datetime(2028, 1, 1, tzinfo=UTC)
    assert stack.metric("gateway_tenant_contract_end_timestamp_seconds",
                        tenant=PROVIDER) == datetime(2028, 1, 1, tzinfo=UTC).timestamp()
    body = stack.ops("/metrics").body.decode()
    assert body.count("gateway_tenant_contract_end_timestamp_seconds{") == 1  # ends: only it


@pytest.mark.parametrize(("bounds", "reason"), [
    ({"contract_until": datetime.now(UTC) - timedelta(seconds=1)}, "tenant-contract-ended"),
    ({"contract_from": datetime.now(UTC) + timedelta(days=1)}, "tenant-contract-not-started"),
])
def test_every_certificate_is_refused_outside_the_contract(
        stack: RunningStack, bounds: dict[str, Any], reason: str) -> None:
    client = stack.client(PROVIDER)
    assert client.get("/itsm/tickets").status == 200  # a keep-alive connection is open
    contract(stack, **bounds)
    try:
        stack.clear_sim_logs()
        for fresh in (False, True):
            if fresh:
                client.close()  # the handshake succeeds: the certificate itself is fine
            resp = client.get("/itsm/tickets")
            assert resp.status == 403, resp.body
            event = next(e for e in stack.audit_events()
                         if e.get("incident") == resp.json["incident"])
            assert event["reason"] == reason and event["tenant"] == PROVIDER
        assert stack.sim_log("itsm") == []
        soc = (stack.stack.work_dir / "soc.jsonl").read_text()
        assert f'"reason":"{reason}"' in soc
        assert stack.client("ores").get("/itsm/tickets").status == 200  # others as before
    finally:
        contract(stack, contract_from=None,
                 contract_until=datetime(2028, 1, 1, tzinfo=UTC))
    assert client.get("/itsm/tickets").status == 200


def test_no_certificate_is_issued_outside_the_contract(stack: RunningStack,
                                                      tmp_path: Path) -> None:
    _, csr = make_key_and_csr(spiffe_uri(stack.stack.trust_domain, PROVIDER, "service", "api"))
    body = {"tenant": PROVIDER, "kind": "service", "name": "api", "csr": csr.decode(),
            "reason": "test"}
    contract(stack, contract_until=datetime.now(UTC) - timedelta(days=1))
    try:
        resp = admin(stack, "POST", "/admin/certs", body)
        assert resp.status == 409, resp.body
        assert resp.json["incident"]
    finally:
        contract(stack, contract_from=None,
                 contract_until=datetime(2028, 1, 1, tzinfo=UTC))
    assert admin(stack, "POST", "/admin/certs", body).status in (201, 202)
