"""Negative TLS (DESIGN.md §9): no client certificate, a certificate
from another CA with a valid-looking SAN, an expired certificate, a
certificate without clientAuth, and a certificate naming no declared
principal: all refused, and nothing reaches any upstream."""

from __future__ import annotations

import http.client
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.pki._authority import CertificateAuthority, key_pem, spiffe_uri
from gateway.tls._policy import client_context

from .conftest import HOST, RunningStack


def _write(tmp: Path, name: str, cert: bytes, key: bytes) -> tuple[Path, Path]:
    c, k = tmp / f"{name}.pem", tmp / f"{name}.key"
    c.write_bytes(cert)
    k.write_bytes(key)
    return c, k


def _get(gw: RunningStack, ctx: ssl.SSLContext, path: str = "/hes/meters") -> int:
    conn = http.client.HTTPSConnection(HOST, gw.port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def _refused_in_handshake(gw: RunningStack, ctx: ssl.SSLContext) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected,
                        BrokenPipeError)):
        _get(gw, ctx)


def _assert_no_upstream_traffic(gw: RunningStack) -> None:
    for name in gw.stack.sim_ports:
        assert gw.sim_log(name) == [], name


def test_no_client_certificate(gw: RunningStack) -> None:
    gw.clear_sim_logs()
    _refused_in_handshake(gw, client_context(gw.stack.pki.ca_cert))
    _assert_no_upstream_traffic(gw)


def test_certificate_from_another_ca_with_valid_looking_san(gw: RunningStack,
                                                            tmp_path: Path) -> None:
    gw.clear_sim_logs()
    rogue = CertificateAuthority.create("Rogue CA")
    uri = spiffe_uri(gw.stack.trust_domain, "ores", "service", "api")
    issued = rogue.issue_client(uri)
    cert, key = _write(tmp_path, "rogue", issued.cert_pem(), issued.key_pem())
    _refused_in_handshake(gw, client_context(gw.stack.pki.ca_cert, cert, key))
    _assert_no_upstream_traffic(gw)


def test_expired_certificate(gw: RunningStack, tmp_path: Path) -> None:
    gw.clear_sim_logs()
    ca = gw.stack.pki.authority()
    uri = spiffe_uri(gw.stack.trust_domain, "ores", "service", "api")
    past = datetime.now(UTC) - timedelta(days=40)
    issued = ca.issue_client(uri, now=past, lifetime=timedelta(days=30))
    cert, key = _write(tmp_path, "expired", issued.cert_pem(), issued.key_pem())
    _refused_in_handshake(gw, client_context(gw.stack.pki.ca_cert, cert, key))
    _assert_no_upstream_traffic(gw)


def test_certificate_without_client_auth_eku(gw: RunningStack) -> None:
    # The gateway's own server certificate (EKU serverAuth only) is no client
    # certificate, although the CA is the right one.
    gw.clear_sim_logs()
    pki = gw.stack.pki
    _refused_in_handshake(gw, client_context(pki.ca_cert, pki.server_cert, pki.server_key))
    _assert_no_upstream_traffic(gw)


@pytest.mark.parametrize("uri", [
    "spiffe://{td}/tenant/ghost/service/api",  # no such tenant
    "spiffe://{td}/tenant/ores/service/intruder",  # no such principal
    "spiffe://{td}/tenant/ores/person/api",  # right name, wrong kind
    "spiffe://other.test/tenant/ores/service/api",  # another trust domain
    "spiffe://{td}/tenant/ores/service/api/extra",
])
def test_certificate_naming_no_declared_principal(gw: RunningStack, tmp_path: Path,
                                                  uri: str) -> None:
    gw.clear_sim_logs()
    issued = gw.stack.pki.authority().issue_client(uri.format(td=gw.stack.trust_domain))
    cert, key = _write(tmp_path, "ghost", issued.cert_pem(), key_pem(issued.key))  # type: ignore[arg-type]
    ctx = client_context(gw.stack.pki.ca_cert, cert, key)
    assert _get(gw, ctx) == 403
    _assert_no_upstream_traffic(gw)
    event = gw.audit_events()[-1]
    assert event["tenant"] == "unknown" and event["status"] == 403


def test_tls_1_2_and_1_3_accepted_nothing_older(gw: RunningStack) -> None:
    # This machine's OpenSSL will not even offer TLS 1.1 as a client, so the
    # floor is asserted on the server's context; 1.2 and 1.3 are shown to work.
    assert gw.stack.gateway.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = gw.context("ores")
        ctx.minimum_version = ctx.maximum_version = version
        assert _get(gw, ctx) == 200


def test_simulators_refuse_requests_without_the_gateways_assertion(gw: RunningStack) -> None:
    # A partner that bypasses the gateway and calls a shared system directly.
    ctx = gw.context("ores")
    conn = http.client.HTTPSConnection(HOST, gw.stack.sim_ports["hes"], context=ctx,
                                       timeout=10)
    try:
        conn.request("GET", "/meters", headers={"X-Gateway-Assertion": "forged"})
        assert conn.getresponse().status == 401
    finally:
        conn.close()


def test_handshake_failures_are_counted_by_reason(gw: RunningStack, tmp_path: Path) -> None:
    # gateway_tls_handshake_failures_total{reason}: the handshake-level refusals
    # above, observed where asyncio sees the OpenSSL error.
    def count(reason: str) -> float:
        return gw.metric("gateway_tls_handshake_failures_total", reason=reason)

    before = {r: count(r) for r in ("no-certificate", "unknown-ca", "expired", "wrong-purpose")}
    _refused_in_handshake(gw, client_context(gw.stack.pki.ca_cert))
    rogue = CertificateAuthority.create("Rogue CA")
    issued = rogue.issue_client(spiffe_uri(gw.stack.trust_domain, "ores", "service", "api"))
    cert, key = _write(tmp_path, "rogue", issued.cert_pem(), issued.key_pem())
    _refused_in_handshake(gw, client_context(gw.stack.pki.ca_cert, cert, key))
    old = gw.stack.pki.authority().issue_client(
        spiffe_uri(gw.stack.trust_domain, "ores", "service", "api"),
        now=datetime.now(UTC) - timedelta(days=40), lifetime=timedelta(days=30))
    cert, key = _write(tmp_path, "old", old.cert_pem(), old.key_pem())
    _refused_in_handshake(gw, client_context(gw.stack.pki.ca_cert, cert, key))
    pki = gw.stack.pki
    _refused_in_handshake(gw, client_context(pki.ca_cert, pki.server_cert, pki.server_key))
    for reason, value in before.items():
        assert count(reason) == value + 1, reason
