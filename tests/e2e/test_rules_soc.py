"""What the SOC must be told (D12), each signal on its own: a tenant probing
other tenants' resources (repeated ``no-relation`` denials), a certificate
from a foreign CA and a revoked certificate refused in the TLS handshake, and
who a refused but verified certificate belongs to.

A stack of its own: the repeated-denial detector keeps a cooldown per
principal, and a revoked certificate must not leak into the shared stack.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from gateway.pki import serial_hex
from gateway.pki._authority import CertificateAuthority, spiffe_uri
from gateway.state import PrincipalState
from gateway.tls._policy import client_context

from .conftest import Client, RunningStack, start_stack
from .test_credentials import admin


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("soc"))
    yield gw
    gw.stop()


def soc_events(gw: RunningStack) -> list[dict[str, Any]]:
    path = gw.stack.work_dir / "soc.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def wait_for_event(gw: RunningStack, match: Any, timeout: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in soc_events(gw) if match(e)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, "no such SOC event"
        time.sleep(0.05)


def handshake_refused(gw: RunningStack, cert: Path, key: Path) -> None:
    client = Client(gw.port, client_context(gw.stack.pki.ca_cert, cert, key))
    try:
        with pytest.raises(OSError):  # ssl.SSLError, a reset or a closed socket
            client.get("/hes/meters")
    finally:
        client.close()


def test_probing_other_tenants_resources_reaches_the_soc(stack: RunningStack) -> None:
    """fluvius may use the HES (its kind, its consortium, its role): every
    refusal below is ``no-relation``, one ORES meter after another."""
    ores_meters = [m["serial"] for m in stack.stack.dataset.meters
                   if all(o["tenant"] == "ores" for o in m["owners"])]
    assert len(ores_meters) >= 2
    client = stack.client("fluvius")
    incidents = []
    for i in range(20):  # the detector's default: 20 denials in a minute
        resp = client.get(f"/hes/meters/{ores_meters[i % len(ores_meters)]}")
        assert resp.status == 403
        incidents.append(resp.json["incident"])
    audit = {e["incident"]: e for e in stack.audit_events() if e.get("incident") in incidents}
    assert {audit[i]["reason"] for i in incidents} == {"no-relation"}
    event = wait_for_event(stack, lambda e: e["kind"] == "repeated-denials"
                           and e["tenant"] == "fluvius")
    assert event["severity"] == "warning"
    assert event["incident"] == incidents[-1]  # the denial that crossed the threshold
    assert event["reason"] == "no-relation"


def test_a_foreign_ca_knocking_reaches_the_soc(stack: RunningStack, tmp_path: Path) -> None:
    rogue = CertificateAuthority.create("Rogue CA")
    issued = rogue.issue_client(spiffe_uri(stack.stack.trust_domain, "ores", "service", "api"))
    cert, key = tmp_path / "rogue.pem", tmp_path / "rogue.key"
    cert.write_bytes(issued.cert_pem())
    key.write_bytes(issued.key_pem())
    before = sum(1 for e in soc_events(stack) if e["kind"] == "tls-handshake-refused"
                 and e.get("reason") == "unknown-ca")
    handshake_refused(stack, cert, key)
    deadline = time.monotonic() + 5
    while sum(1 for e in soc_events(stack) if e["kind"] == "tls-handshake-refused"
              and e.get("reason") == "unknown-ca") <= before:
        assert time.monotonic() < deadline, "the refused handshake never reached the SOC"
        time.sleep(0.05)
    event = wait_for_event(stack, lambda e: e["kind"] == "tls-handshake-refused")
    assert event["severity"] == "warning" and event["incident"]


def test_a_revoked_certificate_in_the_handshake_reaches_the_soc(stack: RunningStack) -> None:
    pki = stack.stack.pki
    cert, key = pki.client_cert("orange", "api"), pki.client_key("orange", "api")
    assert stack.client("orange").get("/cmh/requests").status == 200
    stack.client("orange").close()
    serial = serial_hex(x509.load_pem_x509_certificate(cert.read_bytes()))
    resp = admin(stack, "POST", f"/admin/certs/{serial}/revoke",
                 {"reason": "laptop stolen", "code": "key-compromise"})
    assert resp.status == 200, resp.body
    handshake_refused(stack, cert, key)
    event = wait_for_event(stack, lambda e: e["kind"] == "tls-handshake-refused"
                           and e.get("reason") == "revoked")
    assert event["severity"] == "warning" and event["incident"]


def test_a_revoked_certificate_on_an_open_connection_is_named(stack: RunningStack) -> None:
    """D8, D12: a certificate revoked while its keep-alive connection stays
    open is refused on the next request, and the audit event and the SOC say
    whose it was (tenant, principal, serial), not "unknown"."""
    pki = stack.stack.pki
    cert = pki.client_cert("telenet", "api")
    serial = serial_hex(x509.load_pem_x509_certificate(cert.read_bytes()))
    client = stack.client("telenet")
    assert client.get("/cmh/requests").status == 200
    resp = admin(stack, "POST", f"/admin/certs/{serial}/revoke",
                 {"reason": "left", "code": "cessation-of-operation"})
    assert resp.status == 200, resp.body
    refused = client.get("/cmh/requests")  # the same connection
    assert refused.status == 403
    incident = refused.json["incident"]
    (event,) = [e for e in stack.audit_events() if e.get("incident") == incident]
    assert (event["tenant"], event["principal"], event["cert_serial"], event["reason"]) == (
        "telenet", "api", serial, "certificate-revoked")
    soc = wait_for_event(stack, lambda e: e.get("incident") == incident)
    assert soc["kind"] == "certificate-refused"
    assert (soc["tenant"], soc["principal"], soc["cert_serial"]) == ("telenet", "api", serial)


def disabled(gw: RunningStack, key: tuple[str, str, str], yes: bool) -> None:
    """The state says "disabled" while the certificate stays valid (disabling
    through the admin plane would also revoke it, refusing the handshake)."""
    creds = gw.stack.gateway.credentials
    creds.store.set_principal_state(PrincipalState(key, yes, datetime.now(UTC),
                                                   "leaver (test)", "ores/person/alice"))
    creds.refresh()


def test_a_disabled_principal_is_named_in_every_refusal(stack: RunningStack) -> None:
    """D8, D12: a disabled principal's certificate still verifies, so who it is
    is known: the audit event and the SOC's ``certificate-refused`` name its
    tenant, principal and serial, for a request the pipeline refuses and for
    one the HTTP layer cannot parse."""
    key = ("proximus", "service", "api")
    serial = serial_hex(x509.load_pem_x509_certificate(
        stack.stack.pki.client_cert(key[0], key[2]).read_bytes()))
    disabled(stack, key, True)
    try:
        client = stack.client("proximus")
        refused = client.get("/cmh/requests")
        assert refused.status == 403
        incident = refused.json["incident"]
        (event,) = [e for e in stack.audit_events() if e.get("incident") == incident]
        assert (event["tenant"], event["principal"], event["cert_serial"], event["reason"]) == (
            "proximus", "api", serial, "principal-disabled")
        soc = wait_for_event(stack, lambda e: e.get("incident") == incident)
        assert soc["kind"] == "certificate-refused"
        assert (soc["tenant"], soc["principal"], soc["cert_serial"]) == ("proximus", "api",
                                                                         serial)
        raw = stack.raw("proximus", b"BREW /cmh/requests HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.split(b" ", 2)[1] == b"501", raw[:40]  # method-unknown
        unparsed = json.loads(raw.partition(b"\r\n\r\n")[2])["incident"]
        (event,) = [e for e in stack.audit_events() if e.get("incident") == unparsed]
        assert (event["tenant"], event["principal"], event["cert_serial"]) == (
            "proximus", "api", serial)
    finally:
        disabled(stack, key, False)
    assert stack.client("proximus").get("/cmh/requests").status == 200


def test_a_disabled_admin_is_named_on_the_admin_plane(stack: RunningStack) -> None:
    """D8, D12: the admin plane's refusal of a disabled person says who it was,
    in the audit event and in the SOC's ``admin-refused``."""
    key = ("ores", "person", "carol")  # an auditor: may list certificates
    assert admin(stack, "GET", "/admin/certs", who="carol").status == 200
    disabled(stack, key, True)
    try:
        refused = admin(stack, "GET", "/admin/certs", who="carol")
        assert refused.status == 403
        incident = refused.json["incident"]
        (event,) = [e for e in stack.audit_events() if e.get("incident") == incident]
        assert (event["actor"], event["outcome"], event["detail"]) == (
            "ores/person/carol", "refused", "principal-disabled")
        soc = wait_for_event(stack, lambda e: e.get("incident") == incident)
        assert (soc["kind"], soc["actor"]) == ("admin-refused", "ores/person/carol")
    finally:
        disabled(stack, key, False)
