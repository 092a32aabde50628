"""The vault and break-glass over real sockets (D6, D7, D8)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.server import Gateway
from gateway.tls._policy import client_context
from gateway.vault import MasterKeys
from gateway.vault._breakglass import account_secret_id
from gateway.vault._service import identity_id, token_id

from .conftest import HOST, Response, RunningStack, start_stack
from .test_credentials import Traffic, admin, approved

FAST = "signing_publish_ahead_s = 0.2\n"


@pytest.fixture()
def lone(tmp_path: Path) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path, gateway_settings=FAST)
    yield gw
    gw.stop()


def as_(gw: RunningStack, who: str, method: str, path: str, body: Any = None,
        tenant: str = "ores") -> Response:
    return admin(gw, method, path, body, who=who, tenant=tenant)


def whoami(gw: RunningStack, upstream: str, account: str, password: str) -> int:
    """What a person does with a checked-out password: log in at the system."""
    conn = http.client.HTTPSConnection(HOST, gw.stack.sim_ports[upstream],
                                       context=client_context(gw.stack.pki.ca_cert), timeout=10)
    try:
        auth = base64.b64encode(f"{account}:{password}".encode()).decode()
        conn.request("GET", "/_admin/whoami", headers={"Authorization": f"Basic {auth}"})
        return conn.getresponse().status
    finally:
        conn.close()


def token_accepted(gw: RunningStack, upstream: str, token: str) -> bool:
    conn = http.client.HTTPSConnection(HOST, gw.stack.sim_ports[upstream],
                                       context=client_context(gw.stack.pki.ca_cert), timeout=10)
    try:
        conn.request("POST", "/_admin/credentials", body=json.dumps({"add": token}),
                     headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status == 200
    finally:
        conn.close()


def wait_until(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def case_of(gw: RunningStack, case_id: str) -> dict[str, Any]:
    cases = as_(gw, "carol", "GET", "/admin/breakglass").json["cases"]
    return next(c for c in cases if c["id"] == case_id)


# --- upstream credentials ----------------------------------------------------------

def test_service_credential_never_leaves_the_gateway(lone: RunningStack,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [lone.stack.gateway.vault.get(token_id(n)).decode() for n in lone.stack.sim_ports]
    bodies = []
    meter = next(m["serial"] for m in lone.stack.dataset.meters
                 if m["owners"][-1]["tenant"] == "ores" and not m["airplane_mode"])
    for path in ("/hes/meters", f"/hes/meters/{meter}", "/clearing/access-points",
                 "/cmh/requests", "/itsm/tickets", "/itsm/tickets/INC999999", "/nowhere"):
        resp = lone.client("ores").get(path)
        bodies.append(resp.body + json.dumps(resp.headers).encode())
    lone.fault("hes", "misroute")
    bodies.append(lone.client("ores").get("/hes/meters").body)
    lone.fault("hes", "none")
    bodies.append(as_(lone, "carol", "GET", "/admin/vault/secrets").body)
    bodies.append(lone.ops("/metrics").body)
    work = lone.stack.work_dir
    files = [p.read_bytes() for p in work.iterdir() if p.is_file()]
    logs = "\n".join(r.getMessage() for r in caplog.records).encode()
    for token in tokens:
        needle = token.encode()
        assert all(needle not in b for b in bodies), "a response carried the credential"
        assert all(needle not in f for f in files), "a file at rest holds the credential"
        assert needle not in logs
    # ...and yet the shared systems received it: they refuse requests without it.
    assert lone.client("ores").get("/hes/meters").status == 200


def test_upstream_credential_rotation_under_traffic(lone: RunningStack) -> None:
    gw = lone.stack.gateway
    gw.upstream_creds.grace_s = 0.5
    old = gw.vault.get(token_id("hes")).decode()
    client = lone.client("fluvius")
    with Traffic(lambda: client.get("/hes/meters").status) as traffic:
        traffic.wait_for(10)
        resp = admin(lone, "POST", "/admin/vault/upstreams/hes/rotate", {"reason": "test"})
        assert resp.status == 200, resp.body
        traffic.wait_for(10)
    assert traffic.errors == [] and set(traffic.statuses) == {200}
    new = gw.vault.get(token_id("hes")).decode()
    assert new != old
    assert not token_accepted(lone, "hes", old)  # retired at the shared system
    assert [v.version for v in gw.vault.versions(token_id("hes"))] == [2]  # old shredded


def test_upstream_client_certificate_rotation_under_traffic(lone: RunningStack) -> None:
    # The IT platform takes the gateway's TLS client certificate as its credential.
    gw = lone.stack.gateway
    gw.upstream_creds.grace_s = 0.5
    before = json.loads(gw.vault.get(identity_id("itsm")))["cert"]
    client = lone.client("fluvius")
    with Traffic(lambda: client.get("/itsm/tickets").status) as traffic:
        traffic.wait_for(10)
        resp = admin(lone, "POST", "/admin/vault/upstreams/itsm/rotate", {"reason": "test"})
        assert resp.status == 200, resp.body
        traffic.wait_for(10)
    assert traffic.errors == [] and set(traffic.statuses) == {200}
    after = json.loads(gw.vault.get(identity_id("itsm")))["cert"]
    assert after != before
    assert len(gw.vault.versions(identity_id("itsm"))) == 1  # the old key is destroyed


def test_scheduled_rotation_by_age(lone: RunningStack) -> None:
    gw = lone.stack.gateway
    gw.upstream_creds.grace_s = 0.1
    assert gw.upstream_creds.due() == []  # fresh credentials: nothing due
    old = gw.vault.get(token_id("cmh")).decode()
    gw.upstream_creds.max_age = timedelta(0)  # the policy says: everything is due now
    lone.run(gw.upstream_creds.maintain())
    assert gw.vault.get(token_id("cmh")).decode() != old
    assert not token_accepted(lone, "cmh", old)
    assert lone.client("proximus").get("/cmh/requests").status == 200
    assert lone.metric("gateway_vault_secret_age_seconds", secret="upstream/cmh/token") >= 0


# --- break-glass --------------------------------------------------------------------

class FrozenClock:
    """The break-glass clock, moved by the test (lease expiry without waiting)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def test_break_glass_dual_control_flow(lone: RunningStack) -> None:
    gw = lone.stack.gateway
    clock = FrozenClock()
    gw.breakglass.clock = clock
    req = {"account": "hes-admin", "reason": "HES head-end stuck", "ticket": "CHG-1001",
           "duration_s": 600}
    # grace (soc team) asks, and may not approve herself.
    case = as_(lone, "grace", "POST", "/admin/breakglass/requests", req)
    assert case.status == 201, case.body
    cid = case.json["id"]
    assert as_(lone, "grace", "POST", f"/admin/breakglass/requests/{cid}/approve",
               {"reason": "me"}).status == 403
    # dave (grid-ops) asks; heidi of the same team may not approve it.
    other = as_(lone, "dave", "POST", "/admin/breakglass/requests",
                {**req, "ticket": "CHG-1002"}).json["id"]
    assert as_(lone, "heidi", "POST", f"/admin/breakglass/requests/{other}/approve",
               {"reason": "team"}).status == 403
    # Approval by a different person of another team.
    assert as_(lone, "heidi", "POST", f"/admin/breakglass/requests/{cid}/approve",
               {"reason": "ok"}).status == 200
    assert as_(lone, "bob", "POST", f"/admin/breakglass/requests/{other}/approve",
               {"reason": "ok"}).status == 200
    # Only the requester checks out, once.
    assert as_(lone, "dave", "POST", f"/admin/breakglass/requests/{cid}/checkout",
               {"reason": "x"}).status == 403
    out = as_(lone, "grace", "POST", f"/admin/breakglass/requests/{cid}/checkout",
              {"reason": "fixing"})
    assert out.status == 200, out.body
    password = out.json["credential"]["password"]
    assert whoami(lone, "hes", "hes-admin", password) == 200  # works on the system
    again = as_(lone, "grace", "POST", f"/admin/breakglass/requests/{cid}/checkout",
                {"reason": "again"})
    # A second checkout conflicts with the case's state: 409 and a type that says so.
    assert again.status == 409
    assert again.json["type"] == "urn:shared-grid-gateway:problem:conflict", again.json
    # Exclusive: dave's approved case cannot check out while grace holds the lease.
    assert as_(lone, "dave", "POST", f"/admin/breakglass/requests/{other}/checkout",
               {"reason": "me too"}).status == 409
    assert lone.metric("gateway_breakglass_active_leases", account="hes-admin") == 1
    # The lease runs out (frozen clock moved past it); the gateway rotates the
    # password at the system.
    time.sleep(0.6)
    assert case_of(lone, cid)["status"] == "checked-out"  # not before its time
    clock.now += timedelta(seconds=601)
    wait_until(lambda: case_of(lone, cid)["rotated"] is True)
    assert case_of(lone, cid)["close_reason"] == "lease expired"
    assert whoami(lone, "hes", "hes-admin", password) == 401  # the old one is dead
    fresh = gw.vault.get(account_secret_id("hes-admin")).decode()
    assert fresh != password and whoami(lone, "hes", "hes-admin", fresh) == 200
    # Every step is audited; the password never is.
    events = [e for e in lone.audit_events() if e.get("event") == "admin"
              and str(e.get("action", "")).startswith("breakglass")]
    assert {e["action"] for e in events} >= {"breakglass-request", "breakglass-approve",
                                             "breakglass-checkout", "breakglass-rotate"}
    assert password not in (lone.stack.work_dir / "audit.jsonl").read_text()
    assert lone.metric("gateway_breakglass_checkouts_total", account="hes-admin",
                       mode="approved") == 1


def test_emergency_break_glass_alerts_and_needs_a_review(lone: RunningStack) -> None:
    resp = as_(lone, "erin", "POST", "/admin/breakglass/requests",
               {"account": "itsm-support", "reason": "platform down", "ticket": "INC-911",
                "duration_s": 7200, "emergency": True}, tenant="engie-it")
    assert resp.status == 201, resp.body
    case = resp.json
    assert case["duration_s"] == 30 * 60  # capped by the emergency policy
    soc = [json.loads(line) for line in
           (lone.stack.work_dir / "soc.jsonl").read_text().splitlines()]
    alert = next(e for e in soc if e["kind"] == "breakglass-emergency")
    assert alert["severity"] == "critical" and alert["case"] == case["id"]
    out = as_(lone, "erin", "POST", f"/admin/breakglass/requests/{case['id']}/checkout",
              {"reason": "now"}, tenant="engie-it")
    assert out.status == 200
    assert whoami(lone, "itsm", "itsm-support", out.json["credential"]["password"]) == 200
    assert lone.metric("gateway_breakglass_checkouts_total", account="itsm-support",
                       mode="emergency") == 1
    assert lone.metric("gateway_breakglass_reviews_pending") == 1
    assert as_(lone, "erin", "POST", f"/admin/breakglass/requests/{case['id']}/review",
               {"reason": "all fine"}, tenant="engie-it").status == 403
    assert as_(lone, "bob", "POST", f"/admin/breakglass/requests/{case['id']}/review",
               {"reason": "restart was justified; runbook updated"}).status == 200
    assert lone.metric("gateway_breakglass_reviews_pending") == 0
    assert as_(lone, "erin", "POST", f"/admin/breakglass/requests/{case['id']}/checkin",
               {"reason": "platform back up"}, tenant="engie-it").status == 200
    wait_until(lambda: case_of(lone, case["id"])["rotated"] is True)
    # The case keeps the reason the person gave for closing it.
    assert case_of(lone, case["id"])["close_reason"] == "platform back up"


def test_leaver_loses_its_lease_at_once(lone: RunningStack) -> None:
    cid = as_(lone, "dave", "POST", "/admin/breakglass/requests",
              {"account": "cmh-admin", "reason": "portal fix", "ticket": "CHG-7",
               "duration_s": 3600}).json["id"]
    as_(lone, "bob", "POST", f"/admin/breakglass/requests/{cid}/approve", {"reason": "ok"})
    password = as_(lone, "dave", "POST", f"/admin/breakglass/requests/{cid}/checkout",
                   {"reason": "go"}).json["credential"]["password"]
    resp = admin(lone, "POST", "/admin/principals/ores/person/dave/disable",
                 {"reason": "left the company"})
    assert resp.status == 200 and resp.json["leases_ended"] == [cid]
    assert whoami(lone, "cmh", "cmh-admin", password) == 401


# --- durability and the master key ------------------------------------------------

def test_lease_survives_a_restart_and_expires_after_it(tmp_path: Path) -> None:
    gw = start_stack(tmp_path, gateway_settings=FAST)
    try:
        cid = as_(gw, "dave", "POST", "/admin/breakglass/requests",
                  {"account": "clearing-admin", "reason": "fix", "ticket": "CHG-9",
                   "duration_s": 1}).json["id"]
        as_(gw, "bob", "POST", f"/admin/breakglass/requests/{cid}/approve", {"reason": "ok"})
        password = as_(gw, "dave", "POST", f"/admin/breakglass/requests/{cid}/checkout",
                       {"reason": "go"}).json["credential"]["password"]
    finally:
        gw.stop()  # killed mid-lease
    time.sleep(1.2)  # the lease runs out while the gateway is down
    again = start_stack(tmp_path, gateway_settings=FAST)
    try:
        wait_until(lambda: case_of(again, cid)["rotated"] is True)
        assert case_of(again, cid)["status"] == "closed"
        assert whoami(again, "clearing", "clearing-admin", password) == 401
        fresh = again.stack.gateway.vault.get(account_secret_id("clearing-admin")).decode()
        assert whoami(again, "clearing", "clearing-admin", fresh) == 200
    finally:
        again.stop()


def test_wrong_master_key_refuses_and_changes_nothing(tmp_path: Path) -> None:
    gw = start_stack(tmp_path)
    gw.stop()
    work = tmp_path / "work"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in work.iterdir() if p.name.startswith("vault.db")}
    (work / "vault.key").write_text(MasterKeys.generate().to_text())
    with pytest.raises(ConfigError, match="vault"):
        Gateway(GatewayConfig.from_toml(work / "gateway.toml"))
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in work.iterdir() if p.name.startswith("vault.db")}
    assert before == after


def test_online_rekey(lone: RunningStack) -> None:
    key_file = lone.stack.work_dir / "vault.key"
    before = MasterKeys.from_file(key_file).current_version
    client = lone.client("sibelga")
    with Traffic(lambda: client.get("/itsm/tickets").status) as traffic:
        traffic.wait_for(5)
        # D6: a rekey waits for a second security admin (ivan approves).
        resp = approved(lone, "POST", "/admin/vault/rekey", {"reason": "yearly"})
        assert resp.status == 200 and resp.json["rewrapped"] >= 8
        traffic.wait_for(5)
    assert traffic.errors == [] and set(traffic.statuses) == {200}
    keys = MasterKeys.from_file(key_file)
    assert list(keys.keys) == [before + 1]  # only the new version is needed now
    assert lone.stack.gateway.vault.get(token_id("hes"))


def test_each_system_gets_the_credential_in_its_own_form(gw: RunningStack) -> None:
    # bearer (HES), API key header (clearing), basic auth (portal), mTLS (IT platform)
    gw.clear_sim_logs()
    for tenant, path in (("ores", "/hes/meters"), ("ores", "/clearing/access-points"),
                         ("ores", "/cmh/requests"), ("ores", "/itsm/tickets")):
        assert gw.client(tenant).get(path).status == 200, path
    assert "x-api-key" in gw.sim_log("clearing")[0]["headers"]
    assert "authorization" not in gw.sim_log("clearing")[0]["headers"]
    assert "authorization" in gw.sim_log("cmh")[0]["headers"]
    # mTLS: no header at all, the client certificate is the credential.
    assert "authorization" not in gw.sim_log("itsm")[0]["headers"]
