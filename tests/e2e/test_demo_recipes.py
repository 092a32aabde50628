"""The demo keeps working through the README's own recipes: after the CA and
the server certificate are rotated through the admin API, the simulated
partners follow the trust bundle as real partners would (the HES still
pushes, the receivers still take deliveries, the mTLS shared system still
accepts the gateway's new identity), and the HES simulator says truthfully
who refused its push."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.demo.simulators import CONTROL_HEADER
from gateway.demo.simulators.hes import default_batch_id
from gateway.tls._policy import client_context

from .conftest import HOST, RunningStack, start_stack
from .test_credentials import admin, approved, new_identity
from .test_push import post_batch, receiver, wait_for


@pytest.fixture()
def lone(tmp_path: Path) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path / "stack")
    yield gw
    gw.stop()


def rotate_ca_and_server(gw: RunningStack) -> None:
    """The README's recipes: rotate-ca (approved by a second admin), rotate-server."""
    resp = approved(gw, "POST", "/admin/ca/rotate",
                    {"reason": "yearly CA rotation", "overlap_s": 604800})
    assert resp.status == 200, resp.body
    resp = admin(gw, "POST", "/admin/tls/server/rotate", {"reason": "yearly"})
    assert resp.status == 200, resp.body
    assert gw.stack.pki.ca_cert.read_bytes().count(b"BEGIN CERTIFICATE") == 2


def parts(gw: RunningStack, tenant: str) -> int:
    return len(receiver(gw, "GET", f"/_sim/received/{tenant}")["parts"])


def test_daily_push_and_deliveries_survive_ca_and_server_rotation(lone: RunningStack) -> None:
    gw = lone
    rotate_ca_and_server(gw)
    before = parts(gw, "ores")
    # The HES trusts the gateway's new server certificate (new CA) at once.
    out = gw.sim("hes", "POST", "/_sim/push", {}).json
    assert out["status"] == 202, out
    assert out["answer"]["queued"] > 0
    # ... and the receivers take the deliveries.
    wait_for(lambda: parts(gw, "ores") > before)


def test_receivers_trust_a_client_of_the_new_ca(lone: RunningStack, tmp_path: Path) -> None:
    """The receivers verify client certificates against the bundle as it is
    now: a certificate of the new CA completes the handshake."""
    gw = lone
    rotate_ca_and_server(gw)
    cert, key, _ = new_identity(gw, tmp_path, "ores")
    conn = http.client.HTTPSConnection(
        HOST, gw.stack.receivers_port, timeout=10,
        context=client_context(gw.stack.pki.ca_cert, cert, key))
    try:
        conn.request("GET", "/_sim/received/ores",
                     headers={CONTROL_HEADER: gw.stack.control_token})
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_mtls_shared_system_accepts_the_gateways_identity_of_the_new_ca(
        lone: RunningStack) -> None:
    """After a CA rotation the gateway's upstream identity is issued by the
    new CA; the IT platform (mTLS credential) follows the bundle and accepts it."""
    gw = lone
    rotate_ca_and_server(gw)
    resp = admin(gw, "POST", "/admin/vault/upstreams/itsm/rotate", {"reason": "after the CA"})
    assert resp.status == 200, resp.body
    client = gw.client("ores")
    try:
        assert client.get("/itsm/tickets").status == 200
    finally:
        client.close()


def test_daily_push_says_the_gateway_refused_it(lone: RunningStack) -> None:
    """A batch id already taken by other content: the gateway refuses (409) and
    the simulator says so, with the gateway's problem type and title."""
    gw = lone
    day = (datetime.now(UTC) - timedelta(days=1)).date()
    meter = next(m["serial"] for m in gw.stack.dataset.meters
                 if m["owners"][-1]["tenant"] == "ores" and not m["airplane_mode"])
    status, _ = post_batch(gw, {"batch_id": default_batch_id(day), "records": [
        {"meter": meter, "timestamp": f"{day}T00:15:00+00:00", "obis": "1-0:1.8.1",
         "value": 1.2, "unit": "kWh", "quality": "01"}]})
    assert status == 202
    out = gw.sim("hes", "POST", "/_sim/push", {}).json
    assert out["status"] == 409 and out["batch_id"] == default_batch_id(day)
    problem = out["answer"]
    assert out["refused_by"] == "gateway"
    assert problem["type"].endswith(":conflict")  # the gateway's own, not the shared system's
    assert out["problem"] == {"type": problem["type"], "title": problem["title"],
                              "detail": problem["detail"], "incident": problem["incident"]}
