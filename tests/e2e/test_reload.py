"""Reload without restart: a new relation snapshot changes decisions at once
on open connections; a broken feed is refused and the old snapshot stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.errors import ConfigError

from .conftest import start_stack


def test_relation_feed_reload(tmp_path: Path) -> None:
    gw = start_stack(tmp_path)
    try:
        meter = next(m["serial"] for m in gw.stack.dataset.meters
                     if m["owners"][-1]["tenant"] == "ores" and not m["airplane_mode"])
        client = gw.client("ores")
        assert client.get(f"/hes/meters/{meter}").status == 200

        feed = gw.stack.gateway.config.relations
        doc = json.loads(feed.read_text())
        original = feed.read_text()
        doc["relations"] = [r for r in doc["relations"] if r["id"] != meter]
        feed.write_text(json.dumps(doc))
        gw.stack.gateway.reload()
        # Same keep-alive connection, new snapshot: ORES no longer owns it.
        assert client.get(f"/hes/meters/{meter}").status == 403

        feed.write_text("{not json")
        with pytest.raises(ConfigError):
            gw.stack.gateway.reload()
        assert client.get(f"/hes/meters/{meter}").status == 403  # previous snapshot kept
        feed.write_text(original)
        gw.stack.gateway.reload()
        assert client.get(f"/hes/meters/{meter}").status == 200
    finally:
        gw.stop()


def test_server_certificate_files_reload(tmp_path: Path) -> None:
    # An operator with an external PKI replaces the files and sends SIGHUP.
    from cryptography import x509

    gw = start_stack(tmp_path)
    try:
        pki = gw.stack.pki
        issued = pki.authority().issue_server(["localhost"], ["127.0.0.1"])
        pki.server_cert.write_bytes(issued.cert_pem())
        pki.server_key.write_bytes(issued.key_pem())
        open_conn = gw.client("ores")
        assert open_conn.get("/itsm/tickets").status == 200
        gw.stack.gateway.reload()
        assert open_conn.get("/itsm/tickets").status == 200  # in-flight connection kept
        import http.client
        conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=gw.context("ores"))
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        conn.close()
        assert x509.load_der_x509_certificate(der).serial_number == \
            issued.certificate.serial_number
    finally:
        gw.stop()
