"""The demo partners' TLS follows the trust bundle file: a changed bundle
builds a new context before the next use, a half-written one keeps the last
good context, and a partner's own server certificate is never re-read."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.demo._partner_tls import client_tls, server_tls
from gateway.files import write_private
from gateway.pki import CertificateAuthority


def _subjects(ctx_certs: list[dict[str, object]]) -> set[str]:
    return {str(dict(rdn[0] for rdn in c["subject"])["commonName"])  # type: ignore[attr-defined]
            for c in ctx_certs}


def _replace(path: Path, data: bytes) -> None:
    """As the gateway writes the bundle: whole, by rename."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_client_follows_the_bundle_and_survives_a_bad_one(tmp_path: Path) -> None:
    old, new = CertificateAuthority.create("old CA"), CertificateAuthority.create("new CA")
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(old.cert_pem())
    tls = client_tls(bundle)
    first = tls.context
    assert tls.context is first  # unchanged files: the same context
    assert _subjects(first.get_ca_certs()) == {"old CA"}
    _replace(bundle, old.cert_pem() + new.cert_pem())
    both = tls.context
    assert _subjects(both.get_ca_certs()) == {"old CA", "new CA"}
    _replace(bundle, b"-----BEGIN CERTIFICATE-----\nnot yet\n")
    assert tls.context is both  # caught half-written: the last good one
    _replace(bundle, new.cert_pem())
    assert _subjects(tls.context.get_ca_certs()) == {"new CA"}


def test_server_follows_the_clients_bundle_but_keeps_its_certificate(tmp_path: Path) -> None:
    ca, other = CertificateAuthority.create("dev CA"), CertificateAuthority.create("next CA")
    issued = ca.issue_server(["localhost"], ["127.0.0.1"])
    cert, key, bundle = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    cert.write_bytes(issued.cert_pem())
    write_private(key, issued.key_pem())
    bundle.write_bytes(ca.cert_pem())
    tls = server_tls(cert, key, clients_ca=bundle)
    listening = tls.server_context()
    assert listening.sni_callback is not None  # every handshake takes the current one
    # The server certificate's files are rewritten (here: unusable), the bundle too.
    cert.write_bytes(b"garbage")
    key.write_bytes(b"garbage")
    _replace(bundle, ca.cert_pem() + other.cert_pem())
    assert _subjects(tls.context.get_ca_certs()) == {"dev CA", "next CA"}
