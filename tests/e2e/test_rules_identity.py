"""D8: a disabled principal is refused on every request, whatever its
certificate says. Disabling through the admin plane also revokes the
certificates, which would hide a missing per-request check; here the state
says "disabled" while the certificate stays active and unrevoked, so only the
per-request refusal stands between the principal and its data.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cryptography import x509

from gateway.pki import serial_hex
from gateway.state import PrincipalState

from .conftest import RunningStack, start_stack

KEY = ("telenet", "service", "api")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("identity"))
    yield gw
    gw.stop()


def set_disabled(gw: RunningStack, disabled: bool) -> None:
    creds = gw.stack.gateway.credentials
    creds.store.set_principal_state(PrincipalState(KEY, disabled, datetime.now(UTC),
                                                   "leaver (test)", "ores/person/alice"))
    creds.refresh()


def test_a_disabled_principal_with_a_valid_certificate_is_refused(stack: RunningStack) -> None:
    pem = stack.stack.pki.client_cert(KEY[0], KEY[2]).read_bytes()
    serial = serial_hex(x509.load_pem_x509_certificate(pem))
    client = stack.client(KEY[0], KEY[2])
    assert client.get("/cmh/requests").status == 200  # a keep-alive connection is open
    set_disabled(stack, True)
    try:
        record = stack.stack.gateway.credentials.store.certificate(serial)
        assert record is not None and record.status == "active"  # not revoked
        stack.clear_sim_logs()
        for path in ("/cmh/requests", "/itsm/tickets"):
            for fresh in (False, True):
                if fresh:
                    client.close()  # a new handshake succeeds: the certificate is fine
                resp = client.get(path)
                assert resp.status == 403, (path, resp.body)
                assert resp.headers["content-type"].startswith("application/problem+json")
                event = next(e for e in stack.audit_events()
                             if e.get("incident") == resp.json["incident"])
                assert event["reason"] == "principal-disabled"
                assert event["status"] == 403 and event["route"] is None  # never routed
        assert stack.sim_log("cmh") == [] and stack.sim_log("itsm") == []  # nothing forwarded
        soc = (stack.stack.work_dir / "soc.jsonl").read_text()
        assert '"kind":"certificate-refused"' in soc and '"reason":"principal-disabled"' in soc
        # Another principal of another tenant is served as before.
        assert stack.client("proximus").get("/cmh/requests").status == 200
    finally:
        set_disabled(stack, False)
    assert client.get("/cmh/requests").status == 200  # re-enabled, same certificate
