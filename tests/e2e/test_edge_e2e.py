"""Path strictness, methods and header hygiene over real sockets: refused
requests get a problem document and never reach an upstream; accepted ones
reach it with the gateway's identity only."""

from __future__ import annotations

import json

import pytest

from .conftest import RunningStack


def _meter(gw: RunningStack, tenant: str = "ores") -> str:
    return next(m["serial"] for m in gw.stack.dataset.meters
                if m["owners"][-1]["tenant"] == tenant and not m["airplane_mode"])


def _status_and_body(raw: bytes) -> tuple[int, bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, body


@pytest.mark.parametrize("target,method,status", [
    ("/hes/../clearing/access-points", "GET", 400),
    ("/hes/meters/../meters", "GET", 400),
    ("/hes/%2e%2e/clearing/access-points", "GET", 400),
    ("/hes/meters/%2E%2E%2Fx", "GET", 400),
    ("/hes/meters%2f{meter}", "GET", 400),
    ("/hes/meters%5c{meter}", "GET", 400),
    ("/hes//meters", "GET", 400),
    ("/hes/meters/{meter}%00", "GET", 400),
    ("/hes/meters/{meter}?date=1&date=2", "GET", 400),
    ("http://localhost/hes/meters/{meter}", "GET", 400),
    ("/hes/meters/{meter}", "TRACE", 405),
    ("/hes/meters/{meter}", "FOO", 501),
    ("/hes/meters/{meter}", "DELETE", 405),
    ("/nowhere", "GET", 404),
])
def test_refused_targets(gw: RunningStack, target: str, method: str, status: int) -> None:
    gw.clear_sim_logs()
    raw = (f"{method} {target.format(meter=_meter(gw))} HTTP/1.1\r\nHost: localhost\r\n"
           "Connection: close\r\n\r\n").encode()
    got, head, body = _status_and_body(gw.raw("ores", raw))
    assert got == status, (target, head, body)
    assert b"application/problem+json" in head
    problem = json.loads(body)
    assert problem["status"] == status and problem["incident"]
    assert b"Server: gateway" in head and b"aiohttp" not in head
    for name in gw.stack.sim_ports:
        assert gw.sim_log(name) == []


def test_identity_headers_never_reach_the_upstream(gw: RunningStack) -> None:
    gw.clear_sim_logs()
    before = gw.metric("gateway_identity_headers_dropped_total", tenant="ores")
    resp = gw.client("ores").get(f"/hes/meters/{_meter(gw)}", headers={
        "X-Tenant": "fluvius", "X-Tenant-Id": "fluvius", "X-Forwarded-For": "10.1.2.3",
        "X-Forwarded-Client-Cert": "By=spiffe://shared-grid.test/tenant/fluvius/service/api",
        "Forwarded": "for=10.1.2.3", "Authorization": "Bearer stolen",
        "X-Gateway-Assertion": "forged", "X-Request-Id": "abc-1", "Accept": "application/json",
    })
    assert resp.status == 200
    (entry,) = gw.sim_log("hes")
    assert entry["tenant"] == "ores"
    forbidden = {"x-tenant", "x-tenant-id", "x-forwarded-for", "x-forwarded-client-cert",
                 "forwarded"}
    assert not forbidden & set(entry["headers"])
    # The Authorization the upstream saw is the gateway's injected service
    # credential, not the caller's "Bearer stolen" (the upstream accepted it).
    assert "x-gateway-assertion" in entry["headers"]  # the gateway's own, verified upstream
    assert gw.metric("gateway_identity_headers_dropped_total", tenant="ores") == before + 7


def test_underscore_header_is_refused(gw: RunningStack) -> None:
    gw.clear_sim_logs()
    raw = (f"GET /hes/meters/{_meter(gw)} HTTP/1.1\r\nHost: localhost\r\n"
           "X_Tenant: fluvius\r\nConnection: close\r\n\r\n").encode()
    status, _, _ = _status_and_body(gw.raw("ores", raw))
    assert status == 400
    assert gw.sim_log("hes") == []


def test_post_body_rules(gw: RunningStack) -> None:
    path = f"/hes/meters/{_meter(gw)}/operations"
    field_ops = gw.client("ores", "field-ops")
    assert field_ops.request("POST", path, body={"operation": "set-power-limit",
                                                 "limit_kw": 9.2}).status == 200
    # D6: the read-only principal may not operate meters.
    assert gw.client("ores").request("POST", path, body={"operation": "connect"}).status == 403
    # Bad input: clear 4xx, nothing forwarded.
    gw.clear_sim_logs()
    assert field_ops.request("POST", path, body=["x"]).status == 400
    r = field_ops.request("POST", path, body=None, headers={"Content-Type": "text/plain"})
    assert r.status in (400, 415)
    big = {"operation": "connect", "pad": "x" * 20000}
    assert field_ops.request("POST", path, body=big).status == 413
    assert gw.sim_log("hes") == []


def test_airplane_mode_meter_refuses_remote_operations(gw: RunningStack) -> None:
    # D5: communication disabled at the customer's request -> no remote operations,
    # refused by the gateway itself from the feed (tests/e2e/test_rules_meters.py).
    meter = next(m for m in gw.stack.dataset.meters if m["airplane_mode"])
    owner = meter["owners"][-1]["tenant"]
    gw.clear_sim_logs()
    resp = gw.client(owner, "field-ops").request(
        "POST", f"/hes/meters/{meter['serial']}/operations", body={"operation": "disconnect"})
    assert resp.status == 409
    assert resp.json["type"].endswith(":conflict")
    assert gw.sim_log("hes") == []


def test_assertion_is_bound_to_the_client_certificate(gw: RunningStack) -> None:
    # RFC 8705: the identity assertion carries the SHA-256 thumbprint of the
    # certificate the caller presented, so an upstream can tie the two.
    import base64
    import hashlib

    import jwt
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from gateway.core.model import Caller

    pki = gw.stack.pki
    der = x509.load_pem_x509_certificate(pki.client_cert("ores", "api").read_bytes()
                                         ).public_bytes(serialization.Encoding.DER)
    tenant, principal = gw.stack.registry.principal("ores", "service", "api")  # type: ignore[misc]
    caller = Caller(tenant, principal, cert_fingerprint=hashlib.sha256(der).hexdigest())
    token = gw.stack.gateway.signer.assertion(caller, "hes")
    claims = jwt.decode(token, options={"verify_signature": False})
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert claims["cnf"] == {"x5t#S256": expected}
    assert claims["aud"] == "hes" and claims["tenant"] == "ores"
