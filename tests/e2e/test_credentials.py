"""The security team's credential lifecycle over real TLS.

Each test that changes credentials runs on a stack of its own, so the shared
stack of the other end-to-end tests never sees a revoked certificate.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.pki._authority import key_pem, spiffe_uri
from gateway.pki._issuance import make_key_and_csr
from gateway.tls._policy import client_context

from .conftest import HOST, Client, Response, RunningStack, start_stack

FAST = ("rotation_overlap_s = 2\nsigning_publish_ahead_s = 0.5\n"
        "assertion_lifetime_s = 30\n")


@pytest.fixture()
def lone(tmp_path: Path) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path, gateway_settings=FAST)
    yield gw
    gw.stop()


def admin(gw: RunningStack, method: str, path: str, body: Any = None,
          who: str = "alice", tenant: str = "ores") -> Response:
    """A call to the admin plane as ``tenant/who`` (the security team by default)."""
    ctx = gw.context(tenant, who)
    conn = http.client.HTTPSConnection(HOST, gw.stack.gateway.admin_port, context=ctx,
                                       timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def approved(gw: RunningStack, method: str, path: str, body: Any = None, who: str = "alice",
             approver: str = "ivan") -> Response:
    """An admin call; if it waits for a second admin (202, D6), ``approver``
    (a security admin of another team) approves it and the outcome is returned."""
    resp = admin(gw, method, path, body, who=who)
    if resp.status != 202:
        return resp
    done = admin(gw, "POST", f"/admin/pending/{resp.json['id']}/approve",
                 {"reason": "second pair of eyes"}, who=approver)
    assert done.status == 200, done.body
    return Response(200, done.headers, json.dumps(done.json["result"]).encode())


def new_identity(gw: RunningStack, tmp: Path, tenant: str, name: str = "api",
                 kind: str = "service") -> tuple[Path, Path, dict[str, Any]]:
    """A key made here and a certificate issued from its CSR by the admin API
    (approved by a second admin where D6 asks for one)."""
    key, csr = make_key_and_csr(spiffe_uri(gw.stack.trust_domain, tenant, kind, name))
    resp = approved(gw, "POST", "/admin/certs", {"tenant": tenant, "kind": kind, "name": name,
                                                 "csr": csr.decode(), "reason": "test"})
    assert resp.status in (200, 201), resp.body
    doc = resp.json
    stem = f"{tenant}-{doc['serial']}"
    cert_path, key_path = tmp / f"{stem}.pem", tmp / f"{stem}.key"
    cert_path.write_text(doc["certificate"])
    key_path.write_bytes(key_pem(key))
    return cert_path, key_path, doc


def ctx_for(gw: RunningStack, cert: Path, key: Path,
            ca: Path | None = None) -> ssl.SSLContext:
    return client_context(ca or gw.stack.pki.ca_cert, cert, key)


def fetch(gw: RunningStack, ctx: ssl.SSLContext, path: str) -> int:
    """One request on a new connection, closed afterwards."""
    client = Client(gw.port, ctx)
    try:
        return client.get(path).status
    finally:
        client.close()


def meter_of(gw: RunningStack, tenant: str) -> str:
    return next(m["serial"] for m in gw.stack.dataset.meters
                if m["owners"][-1]["tenant"] == tenant and not m["airplane_mode"])


def admin_events(gw: RunningStack, action: str) -> list[dict[str, Any]]:
    return [e for e in gw.audit_events() if e.get("event") == "admin" and e["action"] == action]


class Traffic:
    """Continuous requests from a background thread, bounded in count and time."""

    def __init__(self, request: Any, max_requests: int = 2000, max_seconds: float = 20) -> None:
        self.request = request
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and len(self.statuses) < self.max_requests \
                and time.monotonic() < deadline:
            try:
                self.statuses.append(self.request())
            except Exception as exc:  # any failure is a failed request
                self.errors.append(repr(exc))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for(self, n: int) -> None:
        target = len(self.statuses) + n
        deadline = time.monotonic() + 10
        while len(self.statuses) < target and time.monotonic() < deadline:
            time.sleep(0.01)


# --- CA operations and the admin plane's refusals ------------------------------

def test_issue_from_csr_and_use_it(lone: RunningStack, tmp_path: Path) -> None:
    cert, key, doc = new_identity(lone, tmp_path, "fluvius")
    assert doc["status"] == "active" and doc["tenant"] == "fluvius"
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    days = (parsed.not_valid_after_utc - parsed.not_valid_before_utc).days
    assert days == 30  # default lifetime
    client = Client(lone.port, ctx_for(lone, cert, key))
    assert client.get(f"/hes/meters/{meter_of(lone, 'fluvius')}").status == 200
    client.close()
    event = admin_events(lone, "certs-issue")[-1]
    assert event["actor"] == "ores/person/alice" and event["outcome"] == "done"
    # Another tenant's principal: issued only after a second admin approved (D6).
    assert event["requested_by"] == "ores/person/alice"
    assert event["approved_by"] == "ores/person/ivan"


@pytest.mark.parametrize("case,reason", [("other-tenant", "san-mismatch"),
                                         ("weak-key", "weak-key")])
def test_bad_csr_refused_and_audited(lone: RunningStack, case: str, reason: str) -> None:
    if case == "other-tenant":
        # Asks for fluvius, but the CSR names ores.
        _, csr = make_key_and_csr(spiffe_uri(lone.stack.trust_domain, "ores", "service", "api"))
    else:
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api")]))
               .sign(weak, hashes.SHA256())
               .public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                        fromlist=["Encoding"]).Encoding.PEM))
    resp = admin(lone, "POST", "/admin/certs", {"tenant": "fluvius", "kind": "service",
                                                "name": "api", "csr": csr.decode(),
                                                "reason": "test"})
    assert resp.status == 422
    assert resp.json["incident"] and resp.headers["content-type"] == "application/problem+json"
    event = admin_events(lone, "certs-issue")[-1]
    assert event["outcome"] == "refused" and event["detail"] == reason


def test_unauthorised_admin_callers(lone: RunningStack) -> None:
    _, csr = make_key_and_csr(spiffe_uri(lone.stack.trust_domain, "fluvius", "service", "api"))
    body = {"tenant": "fluvius", "kind": "service", "name": "api", "csr": csr.decode(),
            "reason": "test"}
    # A data-plane service principal: no admin role at all.
    ctx = lone.context("ores", "api")
    conn = http.client.HTTPSConnection(HOST, lone.stack.gateway.admin_port, context=ctx)
    conn.request("POST", "/admin/certs", body=json.dumps(body))
    assert conn.getresponse().status == 403
    conn.close()
    # An auditor may read, not issue.
    assert admin(lone, "POST", "/admin/certs", body, who="carol").status == 403
    assert admin(lone, "GET", "/admin/review?format=json", who="carol").status == 200
    refused = [e for e in admin_events(lone, "certs-issue") if e["outcome"] == "refused"]
    assert {e["actor"] for e in refused} >= {"ores/service/api", "ores/person/carol"}
    # Segregation of duties: nobody issues their own credentials.
    _, own = make_key_and_csr(spiffe_uri(lone.stack.trust_domain, "ores", "person", "alice"))
    resp = admin(lone, "POST", "/admin/certs", {"tenant": "ores", "kind": "person",
                                                "name": "alice", "csr": own.decode(),
                                                "reason": "me"})
    assert resp.status == 403
    # Every admin action needs a reason.
    assert admin(lone, "POST", "/admin/keys/rotate", {}).status == 400


# --- revocation -------------------------------------------------------------------

def test_revocation_ends_open_connections_within_a_second(lone: RunningStack,
                                                          tmp_path: Path) -> None:
    cert, key, doc = new_identity(lone, tmp_path, "sibelga")
    client = Client(lone.port, ctx_for(lone, cert, key))
    path = f"/hes/meters/{meter_of(lone, 'sibelga')}"
    assert client.get(path).status == 200  # the connection is open (keep-alive)
    before = lone.metric("gateway_revocations_total", reason="key-compromise")
    t0 = time.monotonic()
    assert admin(lone, "POST", f"/admin/certs/{doc['serial']}/revoke",
                 {"reason": "laptop stolen", "code": "key-compromise"}).status == 200
    resp = client.get(path)  # same connection
    assert resp.status == 403 and time.monotonic() - t0 < 1.0
    client.close()
    # A new handshake with it fails at the TLS layer (CRL checked in the handshake).
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        fetch(lone, ctx_for(lone, cert, key), path)
    assert lone.metric("gateway_revocations_total", reason="key-compromise") == before + 1


def test_published_crl_verifies_with_openssl(lone: RunningStack, tmp_path: Path) -> None:
    cert, _, doc = new_identity(lone, tmp_path, "resa")
    good, _, _ = new_identity(lone, tmp_path, "resa", "field-ops")
    assert admin(lone, "POST", f"/admin/certs/{doc['serial']}/revoke",
                 {"reason": "test"}).status == 200
    crl = lone.ops("/crl.pem")
    assert crl.status == 200
    crl_file = tmp_path / "crl.pem"
    crl_file.write_bytes(crl.body)
    ca = str(lone.stack.pki.ca_cert)
    ok = subprocess.run(["openssl", "crl", "-in", str(crl_file), "-CAfile", ca, "-noout",
                         "-verify"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "verify OK" in ok.stdout + ok.stderr
    revoked = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", ca, "-CRLfile",
                              str(crl_file), str(cert)], capture_output=True, text=True,
                             check=False)
    assert revoked.returncode != 0 and "revoked" in revoked.stdout + revoked.stderr
    fine = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", ca, "-CRLfile",
                           str(crl_file), str(good)], capture_output=True, text=True, check=False)
    assert fine.returncode == 0, fine.stdout + fine.stderr


# --- rotation with overlap ---------------------------------------------------------

def test_rotation_overlap_under_traffic(lone: RunningStack, tmp_path: Path) -> None:
    old_cert, old_key, old = new_identity(lone, tmp_path, "pidpa")
    path = f"/hes/meters/{meter_of(lone, 'pidpa')}"
    current = {"client": Client(lone.port, ctx_for(lone, old_cert, old_key))}

    def one() -> int:
        status = current["client"].get(path).status
        assert status == 200, status
        return status

    with Traffic(one) as traffic:
        traffic.wait_for(20)
        key, csr = make_key_and_csr(spiffe_uri(lone.stack.trust_domain, "pidpa", "service",
                                               "api"))
        resp = approved(lone, "POST", f"/admin/certs/{old['serial']}/rotate",
                        {"csr": csr.decode(), "reason": "scheduled", "overlap_s": 2})
        assert resp.status == 200, resp.body
        new_cert, new_key = tmp_path / "new.pem", tmp_path / "new.key"
        new_cert.write_text(resp.json["certificate"])
        new_key.write_bytes(key_pem(key))
        traffic.wait_for(20)  # both work during the overlap
        previous = current["client"]
        current["client"] = Client(lone.port, ctx_for(lone, new_cert, new_key))
        traffic.wait_for(20)
        time.sleep(3)  # the overlap ends; the predecessor is revoked by the gateway
        traffic.wait_for(20)
    assert traffic.errors == [] and set(traffic.statuses) == {200}
    assert previous.get(path).status == 403  # the old one is retired now
    previous.close()
    current["client"].close()
    rec = lone.stack.gateway.store.certificate(old["serial"])
    assert rec is not None and rec.status == "revoked" and rec.revoke_reason == "superseded"


# --- the gateway's own material ----------------------------------------------------

def test_server_certificate_swap_under_traffic(lone: RunningStack) -> None:
    path = f"/hes/meters/{meter_of(lone, 'ores')}"
    keep_alive = lone.client("ores")
    ctx = lone.context("ores")

    def fresh_connection() -> int:
        conn = http.client.HTTPSConnection(HOST, lone.port, context=ctx, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()

    served: list[int] = []
    with Traffic(lambda: keep_alive.get(path).status) as a, Traffic(fresh_connection) as b:
        a.wait_for(10)
        for _ in range(3):
            resp = admin(lone, "POST", "/admin/tls/server/rotate", {"reason": "test"})
            assert resp.status == 200
            served.append(int(resp.json["serial"], 16))
            b.wait_for(5)
    for t in (a, b):
        assert t.errors == [] and set(t.statuses) == {200}
    conn = http.client.HTTPSConnection(HOST, lone.port, context=ctx, timeout=10)
    conn.connect()
    der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    conn.close()
    assert x509.load_der_x509_certificate(der).serial_number == served[-1]


def test_ca_rotation_end_to_end(lone: RunningStack, tmp_path: Path) -> None:
    old_ca_pem = lone.stack.pki.ca_cert.read_bytes()
    old_ca = tmp_path / "old-ca.pem"
    old_ca.write_bytes(old_ca_pem)
    path = f"/hes/meters/{meter_of(lone, 'farys')}"
    resp = approved(lone, "POST", "/admin/ca/rotate", {"reason": "yearly", "overlap_s": 3})
    assert resp.status == 200, resp.body
    new_ca = tmp_path / "new-ca.pem"
    new_ca.write_text(resp.json["certificate"])
    bundle = lone.stack.pki.ca_cert.read_bytes()
    assert bundle.count(b"BEGIN CERTIFICATE") == 2  # both trusted during the overlap
    # Certificates of both CAs work during the overlap.
    assert lone.client("farys").get(path).status == 200  # old CA (dev PKI)
    new_cert, new_key, _ = new_identity(lone, tmp_path, "farys", "field-ops")
    both = lone.stack.pki.ca_cert
    assert fetch(lone, ctx_for(lone, new_cert, new_key, both), path) == 200
    time.sleep(4)  # the overlap ends
    assert lone.stack.pki.ca_cert.read_bytes().count(b"BEGIN CERTIFICATE") == 1
    # A client that trusts only the new CA reaches the gateway (new server cert)...
    assert fetch(lone, ctx_for(lone, new_cert, new_key, new_ca), path) == 200
    # ...and certificates of the old CA no longer get through a new handshake.
    old_client = lone.context("farys")
    old_client.load_verify_locations(cafile=str(new_ca))
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        fetch(lone, old_client, path)


def test_signing_key_rotation_under_traffic(lone: RunningStack) -> None:
    path = f"/hes/meters/{meter_of(lone, 'ores')}"
    client = lone.client("ores")
    before = {k["kid"] for k in lone.ops("/.well-known/jwks.json").json["keys"]}
    with Traffic(lambda: client.get(path).status) as traffic:
        traffic.wait_for(10)
        resp = admin(lone, "POST", "/admin/keys/rotate", {"reason": "scheduled"})
        assert resp.status == 200
        kid = resp.json["kid"]
        published = {k["kid"] for k in lone.ops("/.well-known/jwks.json").json["keys"]}
        assert published == before | {kid}  # published before it signs
        time.sleep(1.0)  # past publish_ahead: the new key signs
        traffic.wait_for(20)
    assert traffic.errors == [] and set(traffic.statuses) == {200}
    keys = admin(lone, "GET", "/admin/keys", who="carol").json["keys"]
    assert next(k for k in keys if k["kid"] == kid)["signing"] is True
    assert lone.metric("gateway_signing_key_age_seconds") < 60


# --- leavers and the access review (D8) --------------------------------------

def test_leaver_is_blocked_at_once(lone: RunningStack, tmp_path: Path) -> None:
    client = lone.client("telenet")
    assert client.get("/cmh/requests").status == 200
    resp = admin(lone, "POST", "/admin/principals/telenet/service/api/disable",
                 {"reason": "contract ended"})
    assert resp.status == 200 and resp.json["revoked"]
    assert client.get("/cmh/requests").status == 403  # open connection, at once
    # No new certificate for a disabled principal.
    _, csr = make_key_and_csr(spiffe_uri(lone.stack.trust_domain, "telenet", "service", "api"))
    assert admin(lone, "POST", "/admin/certs", {"tenant": "telenet", "kind": "service",
                                                "name": "api", "csr": csr.decode(),
                                                "reason": "x"}).status == 409
    review = admin(lone, "GET", "/admin/review?format=json", who="carol").json["principals"]
    row = next(r for r in review if r["tenant"] == "telenet" and r["principal"] == "api")
    assert row["disabled"] is True
    assert all(c["status"] == "revoked" for c in row["certificates"])
    # Re-enabling is explicit and audited; a new certificate is then needed.
    assert approved(lone, "POST", "/admin/principals/telenet/service/api/enable",
                    {"reason": "rehired"}, who="bob").status == 200
    _, _, doc = new_identity(lone, tmp_path, "telenet")
    assert doc["status"] == "active"
    actions = [e["action"] for e in lone.audit_events() if e.get("event") == "admin"]
    assert "principal-disable" in actions and "principal-enable" in actions


def test_access_review_exports(lone: RunningStack) -> None:
    assert lone.client("swde").get("/cmh/requests").status == 200
    rows = admin(lone, "GET", "/admin/review?format=json", who="carol").json["principals"]
    swde = next(r for r in rows if r["tenant"] == "swde" and r["principal"] == "api")
    assert swde["last_used"] and swde["certificates"] and swde["roles"] == ["reader"]
    alice = next(r for r in rows if r["principal"] == "alice")
    assert alice["admin_grants"] == ["security-admin"]
    csv_resp = admin(lone, "GET", "/admin/review?format=csv", who="carol")
    assert csv_resp.headers["content-type"].startswith("text/csv")
    lines = csv_resp.body.decode().splitlines()
    assert lines[0].startswith("tenant,tenant_kind,principal_kind,principal")
    assert len(lines) == len(rows) + 1


def test_credential_metrics(lone: RunningStack) -> None:
    expiry = lone.metric("gateway_certificate_expiry_timestamp_seconds", tenant="ores",
                         principal="service/api")
    assert expiry > time.time() + 20 * 86400
    assert lone.metric("gateway_certificate_expiry_timestamp_seconds", tenant="gateway",
                       principal="server/gateway") > time.time()


def test_state_survives_a_restart(tmp_path: Path) -> None:
    # Revocations, disabled principals and signing keys are durable; a demo
    # certificate revoked in an earlier run is replaced by a fresh one.
    gw = start_stack(tmp_path, gateway_settings=FAST)
    try:
        cert, key, doc = new_identity(gw, tmp_path, "sibelga")
        admin(gw, "POST", f"/admin/certs/{doc['serial']}/revoke", {"reason": "t"})
        admin(gw, "POST", "/admin/principals/dewatergroep/service/api/disable", {"reason": "t"})
        revoked_dev = gw.stack.pki.client_cert("orange", "api").read_bytes()
        rec = next(c for c in gw.stack.gateway.store.certificates(
            principal=("orange", "service", "api")))
        admin(gw, "POST", f"/admin/certs/{rec.serial}/revoke", {"reason": "t"})
        kids = {k["kid"] for k in gw.ops("/.well-known/jwks.json").json["keys"]}
    finally:
        gw.stop()
    again = start_stack(tmp_path, gateway_settings=FAST)
    try:
        path = f"/hes/meters/{meter_of(again, 'sibelga')}"
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
            fetch(again, ctx_for(again, cert, key), path)
        # Still disabled: its certificate stays revoked (refused in the handshake).
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
            fetch(again, again.context("dewatergroep"), "/itsm/tickets")
        assert again.stack.pki.client_cert("orange", "api").read_bytes() != revoked_dev
        assert again.client("orange").get("/cmh/requests").status == 200
        assert kids <= {k["kid"] for k in again.ops("/.well-known/jwks.json").json["keys"]}
    finally:
        again.stop()


def test_crl_is_resigned_before_it_expires(tmp_path: Path) -> None:
    # An expired CRL would refuse every handshake: maintenance re-signs it at
    # half its validity.
    gw = start_stack(tmp_path, gateway_settings=FAST)
    try:
        creds = gw.stack.gateway.credentials
        creds.crl_next_update = timedelta(seconds=2)
        creds.refresh()
        first = x509.load_pem_x509_crl(gw.ops("/crl.pem").body).next_update_utc
        time.sleep(2.5)  # past the first CRL's nextUpdate
        crl = x509.load_pem_x509_crl(gw.ops("/crl.pem").body)
        assert crl.next_update_utc > first
        assert gw.client("ores").get("/itsm/tickets").status == 200  # new handshake works
    finally:
        gw.stop()
