"""Separation of duties on the admin plane (D6, D7), reproduced over real mTLS.

One security admin used to be able to issue a certificate for any person or
tenant (``alice`` issuing ``bob`` from a CSR she holds), rotate the CA, rekey
the vault, and disable herself. Now those wait for a second security admin,
not the requester and not of the requester's team (``ivan``, cyber-defence,
approves what IAM's ``alice`` or ``bob`` ask).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.pki._authority import spiffe_uri
from gateway.pki._issuance import make_key_and_csr
from gateway.state import PendingAction

from .conftest import RunningStack, start_stack
from .test_credentials import admin, admin_events


@pytest.fixture()
def lone(tmp_path: Path) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path)
    yield gw
    gw.stop()


def csr_for(gw: RunningStack, tenant: str, kind: str, name: str) -> str:
    """A CSR for a key the *caller* holds (alice, in the reproduction)."""
    return make_key_and_csr(spiffe_uri(gw.stack.trust_domain, tenant, kind, name))[1].decode()


def issue_body(gw: RunningStack, tenant: str, kind: str, name: str) -> dict[str, Any]:
    return {"tenant": tenant, "kind": kind, "name": name, "reason": "test",
            "csr": csr_for(gw, tenant, kind, name)}


def certs_of(gw: RunningStack, key: tuple[str, str, str]) -> set[str]:
    return {c.serial for c in gw.stack.gateway.store.certificates(principal=key)}


def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, resp.body
    assert resp.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = resp.json
    assert doc["incident"]
    return doc


def last(gw: RunningStack, action: str) -> dict[str, Any]:
    return admin_events(gw, action)[-1]


def approve(gw: RunningStack, pid: str, who: str) -> Any:
    return admin(gw, "POST", f"/admin/pending/{pid}/approve", {"reason": "checked"}, who=who)


def test_alice_issuing_for_bob_is_pending_and_needs_another_team(lone: RunningStack) -> None:
    bob = ("ores", "person", "bob")
    before = certs_of(lone, bob)
    resp = admin(lone, "POST", "/admin/certs", issue_body(lone, *bob))
    assert resp.status == 202, resp.body
    pending = resp.json
    assert "certificate" not in pending and pending["status"] == "pending"
    assert pending["requested_by"] == "ores/person/alice"
    assert pending["rule"] == "privileged-principal"
    assert certs_of(lone, bob) == before  # D6: nothing issued yet
    event = last(lone, "certs-issue")
    assert event["outcome"] == "pending" and event["pending"] == pending["id"]
    assert event["requested_by"] == "ores/person/alice"
    pid = pending["id"]
    # Never the requester (unlike hashicorp/vault#19214)...
    problem(approve(lone, pid, "alice"), 403)
    assert last(lone, "pending-approve")["detail"] == "own-request"
    # ...nor someone of her team (bob is IAM too, and the target)...
    problem(approve(lone, pid, "bob"), 403)
    assert last(lone, "pending-approve")["outcome"] == "refused"
    # ...nor an auditor.
    problem(approve(lone, pid, "carol"), 403)
    assert certs_of(lone, bob) == before
    # ivan (cyber-defence) approves: the certificate is issued now.
    done = approve(lone, pid, "ivan")
    assert done.status == 200, done.body
    cert = done.json["result"]
    assert cert["certificate"].startswith("-----BEGIN CERTIFICATE") and cert["name"] == "bob"
    assert certs_of(lone, bob) == before | {cert["serial"]}
    event = last(lone, "pending-approve")
    assert event["requested_by"] == "ores/person/alice"
    assert event["approved_by"] == "ores/person/ivan" and event["outcome"] == "done"
    issued = last(lone, "certs-issue")
    assert (issued["outcome"], issued["approved_by"]) == ("done", "ores/person/ivan")
    # The requester fetches it through the pending id; it is not approved twice.
    fetched = admin(lone, "GET", f"/admin/pending/{pid}").json
    assert fetched["status"] == "done" and fetched["result"]["serial"] == cert["serial"]
    problem(approve(lone, pid, "ivan"), 409)
    # The access review says who asked and who approved.
    rows = admin(lone, "GET", "/admin/review?format=json", who="carol").json["principals"]
    row = next(r for r in rows if r["principal"] == "bob")
    assert row["two_person"] == [{"serial": cert["serial"], "pending": pid,
                                  "requested_by": "ores/person/alice",
                                  "approved_by": "ores/person/ivan"}]


def test_denied_request_issues_nothing(lone: RunningStack) -> None:
    dave = ("ores", "person", "dave")
    before = certs_of(lone, dave)
    pid = admin(lone, "POST", "/admin/certs", issue_body(lone, *dave)).json["id"]
    resp = admin(lone, "POST", f"/admin/pending/{pid}/deny", {"reason": "no ticket"},
                 who="ivan")
    assert resp.status == 200 and resp.json["pending"]["status"] == "denied"
    problem(approve(lone, pid, "ivan"), 409)
    assert certs_of(lone, dave) == before
    assert last(lone, "pending-deny")["denied_by"] == "ores/person/ivan"


@pytest.mark.parametrize("tenant,kind,name,rule", [
    ("fluvius", "service", "api", "other-tenant"),
    ("hes-operator", "service", "pusher", "other-tenant"),
    ("ores", "person", "dave", "privileged-principal"),
    ("ores", "person", "carol", "privileged-principal"),
    # D5: the HES treats remote meter operations as privileged.
    ("ores", "service", "field-ops", "privileged-principal"),
])
def test_needs_approval(gw: RunningStack, tenant: str, kind: str, name: str,
                        rule: str) -> None:
    key = (tenant, kind, name)
    before = certs_of(gw, key)
    resp = admin(gw, "POST", "/admin/certs", issue_body(gw, *key))
    assert resp.status == 202, resp.body
    assert resp.json["rule"] == rule and certs_of(gw, key) == before
    # Withdrawn by its requester, so the shared stack keeps no open item.
    assert admin(gw, "POST", f"/admin/pending/{resp.json['id']}/deny",
                 {"reason": "test"}).status == 200


def test_own_service_is_issued_by_one_admin(gw: RunningStack) -> None:
    resp = admin(gw, "POST", "/admin/certs", issue_body(gw, "ores", "service", "api"))
    assert resp.status == 201, resp.body
    assert resp.json["certificate"].startswith("-----BEGIN CERTIFICATE")


def test_nobody_disables_themselves(gw: RunningStack) -> None:
    doc = problem(admin(gw, "POST", "/admin/principals/ores/person/alice/disable",
                        {"reason": "oops"}), 403)
    assert "themselves" in doc["detail"]
    event = last(gw, "principal-disable")
    assert (event["outcome"], event["detail"]) == ("refused", "self-disable-refused")
    assert admin(gw, "GET", "/admin/keys").status == 200  # alice still works


def test_disabling_a_security_admin_needs_approval(lone: RunningStack) -> None:
    resp = admin(lone, "POST", "/admin/principals/ores/person/bob/disable", {"reason": "left"})
    assert resp.status == 202, resp.body
    assert admin(lone, "GET", "/admin/keys", who="bob").status == 200  # not yet
    assert approve(lone, resp.json["id"], "ivan").status == 200
    states = {s.key: s.disabled for s in lone.stack.gateway.store.principal_states()}
    assert states[("ores", "person", "bob")] is True
    # Disabling anyone else stays a one-admin act (D8 leavers are blocked at once).
    assert admin(lone, "POST", "/admin/principals/ores/person/dave/disable",
                 {"reason": "left"}).status == 200


@pytest.mark.parametrize("path,body", [("/admin/ca/rotate", {"overlap_s": 60}),
                                       ("/admin/vault/rekey", {})])
def test_ca_rotation_and_vault_rekey_need_approval(lone: RunningStack, path: str,
                                                   body: dict[str, Any]) -> None:
    cas = len(lone.stack.gateway.store.cas())
    resp = admin(lone, "POST", path, {**body, "reason": "yearly"})
    assert resp.status == 202, resp.body
    assert len(lone.stack.gateway.store.cas()) == cas  # nothing happened yet
    problem(approve(lone, resp.json["id"], "bob"), 403)  # same team as alice
    done = approve(lone, resp.json["id"], "ivan")
    assert done.status == 200, done.body
    if "ca" in path:
        assert len(lone.stack.gateway.store.cas()) == cas + 1
    else:
        assert done.json["result"]["rewrapped"] >= 1


def test_re_enabling_another_tenant_needs_approval(lone: RunningStack) -> None:
    assert admin(lone, "POST", "/admin/principals/telenet/service/api/disable",
                 {"reason": "contract ended"}).status == 200
    resp = admin(lone, "POST", "/admin/principals/telenet/service/api/enable",
                 {"reason": "renewed"}, who="bob")
    assert resp.status == 202
    states = {s.key: s.disabled for s in lone.stack.gateway.store.principal_states()}
    assert states[("telenet", "service", "api")] is True
    assert approve(lone, resp.json["id"], "ivan").status == 200
    states = {s.key: s.disabled for s in lone.stack.gateway.store.principal_states()}
    assert states[("telenet", "service", "api")] is False


def test_pending_items_expire_and_survive_a_restart(tmp_path: Path) -> None:
    gw = start_stack(tmp_path)
    try:
        pid = admin(gw, "POST", "/admin/certs",
                    issue_body(gw, "fluvius", "service", "api")).json["id"]
        store = gw.stack.gateway.store
        item = store.pending(pid)
        assert item is not None
        now = gw.stack.gateway.credentials.clock()
        old = PendingAction(**{**{f: getattr(item, f) for f in item.__dataclass_fields__},
                               "id": "P-expired", "created": now - timedelta(hours=25),
                               "expires_at": now - timedelta(hours=1)})
        store.put_pending(old)
    finally:
        gw.stop()
    again = start_stack(tmp_path)
    try:
        assert admin(again, "GET", f"/admin/pending/{pid}").json["status"] == "pending"
        problem(approve(again, "P-expired", "ivan"), 409)
        assert admin(again, "GET", "/admin/pending/P-expired").json["status"] == "expired"
        assert last(again, "pending-expire")["target"] == "P-expired"
        assert approve(again, pid, "ivan").status == 200
    finally:
        again.stop()


# -- every admin-plane answer is a problem document and an audit event (D10) ------

def raw_admin(gw: RunningStack, method: str, path: str, data: bytes,
              who: str = "alice") -> Any:
    import http.client

    from .conftest import HOST, Response
    conn = http.client.HTTPSConnection(HOST, gw.stack.gateway.admin_port,
                                       context=gw.context("ores", who), timeout=30)
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("data,code", [
    (b"[" * 3000 + b"]" * 3000, "body-too-deep"),
    (b'{"reason": "x", "a": ' + b'{"a":' * 70 + b"1" + b"}" * 71, "body-too-deep"),
    (b'{"reason": "x", "reason": "y"}', "body-duplicate-key"),
    (b"{", "body-malformed-json"),
    (b'{"reason": "x", "overlap_s": 1e308}', "field-invalid"),
])
def test_bad_admin_bodies_are_400_and_audited(gw: RunningStack, data: bytes, code: str) -> None:
    resp = raw_admin(gw, "POST", "/admin/ca/rotate", data)
    assert problem(resp, 400)["type"].endswith(":bad-request")
    event = last(gw, "ca-rotate")
    assert (event["outcome"], event["detail"]) == ("refused", code)
    assert event["incident"] == resp.json["incident"]


def test_unknown_admin_route_is_audited(gw: RunningStack) -> None:
    resp = raw_admin(gw, "GET", "/admin/nothing-here", b"")
    assert problem(resp, 404)
    event = last(gw, "admin-route")
    assert event["target"] == "/admin/nothing-here" and event["detail"] == "http-404"
    assert event["incident"] == resp.json["incident"]


def test_lone_surrogate_reason_is_400_and_no_key_is_made(gw: RunningStack) -> None:
    kids = {k["kid"] for k in gw.ops("/.well-known/jwks.json").json["keys"]}
    resp = raw_admin(gw, "POST", "/admin/keys/rotate", b'{"reason": "\\ud800"}')
    problem(resp, 400)
    assert {k["kid"] for k in gw.ops("/.well-known/jwks.json").json["keys"]} == kids
    event = last(gw, "keys-rotate")
    assert (event["outcome"], event["detail"]) == ("refused", "field-not-utf8")


def test_a_done_action_has_its_attempt_recorded_first(gw: RunningStack) -> None:
    resp = admin(gw, "POST", "/admin/keys/rotate", {"reason": "quarterly"})
    assert resp.status == 200
    events = [e for e in admin_events(gw, "keys-rotate") if e["reason"] == "quarterly"]
    assert [e["outcome"] for e in events][-2:] == ["attempt", "done"]
    assert json.dumps(events)  # plain JSON, both actors' fields absent here


def test_an_admin_action_that_fails_is_a_500_problem_and_audited(lone: RunningStack) -> None:
    """D10: an action that breaks half-way (here the server key's path is a
    directory, so the rotated key cannot be written) answers a 500 problem
    document whose incident id is in an audit event, after its attempt event."""
    gw = lone
    key_path = gw.stack.gateway.config.server_key
    saved = key_path.read_bytes()
    key_path.unlink()
    key_path.mkdir()
    try:
        resp = admin(gw, "POST", "/admin/tls/server/rotate", {"reason": "yearly"})
        doc = problem(resp, 500)
        assert doc["type"].endswith(":internal-error")
        events = admin_events(gw, "server-rotate")
        assert [e["outcome"] for e in events[-2:]] == ["attempt", "error"]
        assert events[-1]["incident"] == doc["incident"]
        assert events[-1]["actor"] == "ores/person/alice"
    finally:
        key_path.rmdir()
        key_path.write_bytes(saved)
        key_path.chmod(0o600)
