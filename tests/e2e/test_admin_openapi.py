"""``docs/admin-openapi.yaml`` describes the admin plane as it is: a valid
OpenAPI 3.1 document (checked by openapi-spec-validator), naming exactly the
routes the running admin plane registers (a route added or removed on
either side fails here), with every refusal an RFC 9457 problem document,
and real answers over mTLS valid against its schemas (jsonschema)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from gateway.edge import GuardedAppRunner
from gateway.pki._authority import spiffe_uri
from gateway.pki._issuance import make_key_and_csr

from .conftest import REPO, Response, RunningStack, start_stack
from .test_credentials import admin

SPEC_PATH = REPO / "docs" / "admin-openapi.yaml"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack of its own: the calls below issue, rotate and approve."""
    running = start_stack(tmp_path_factory.mktemp("openapi"))
    yield running
    running.stop()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method.upper(), path, op


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A ``$ref`` to a component, followed (responses, request bodies, schemas)."""
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = spec["components"][section][name]
    return node


def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    validate(spec)  # openapi-spec-validator: raises on any violation


def test_the_validator_would_catch_a_broken_document(spec: dict[str, Any]) -> None:
    broken = copy.deepcopy(spec)
    broken["paths"]["/admin/certs"]["get"]["responses"]["200"] = {
        "$ref": "#/components/responses/NoSuchResponse"}
    with pytest.raises(Exception, match="NoSuchResponse"):
        validate(broken)


def test_the_document_names_exactly_the_routes_the_admin_plane_registers(
        spec: dict[str, Any], plane: RunningStack) -> None:
    app = next(r.app for r in plane.stack.gateway.runners
               if isinstance(r, GuardedAppRunner))
    registered = {(r.method, r.resource.canonical) for r in app.router.routes()
                  if r.resource is not None}
    # aiohttp answers HEAD wherever GET is registered: implied, not documented.
    heads = {path for method, path in registered if method == "HEAD"}
    assert heads == {path for method, path in registered if method == "GET"}
    registered = {(m, p) for m, p in registered if m != "HEAD"}
    documented = {(method, path) for method, path, _ in operations(spec)}
    assert sorted(registered - documented) == [], "routes the document does not describe"
    assert sorted(documented - registered) == [], "documented routes the plane lacks"


def test_every_operation_documents_its_refusals_as_problem_documents(
        spec: dict[str, Any]) -> None:
    problem = {"$ref": "#/components/schemas/Problem"}
    actions = [op["x-gateway-action"] for _, _, op in operations(spec)]
    assert len(actions) == len(set(actions))  # one audit action per route
    for method, path, op in operations(spec):
        assert op["x-gateway-roles"], (method, path)
        codes = set(op["responses"])
        assert {"403", "500"} <= codes, (method, path)  # every route: roles, failures
        if method == "POST":  # every write reads a body and needs a reason
            assert {"400", "413"} <= codes, (method, path)
            body = resolve(spec, op["requestBody"])
            schema = resolve(spec, body["content"]["application/json"]["schema"])
            parts = [resolve(spec, part) for part in schema.get("allOf", [schema])]
            assert any("reason" in part.get("required", []) for part in parts), (method, path)
        for code, answer in op["responses"].items():
            content = resolve(spec, answer)["content"]
            if int(code) >= 400:
                assert content == {PROBLEM: {"schema": problem}}, (method, path, code)
            else:
                assert PROBLEM not in content, (method, path, code)


def check(spec: dict[str, Any], template: str, resp: Response, method: str = "GET") -> None:
    """``resp`` is one of the answers documented for ``method template``:
    its status is listed, its content type too, and its body validates."""
    op = spec["paths"][template][method.lower()]
    assert str(resp.status) in op["responses"], (template, resp.status, resp.body)
    content = resolve(spec, op["responses"][str(resp.status)])["content"]
    media = resp.headers["content-type"].split(";")[0].strip()
    assert media in content, (template, resp.status, media)
    if not media.endswith("json"):
        return
    # The schema, with the document's components beside it so its $refs resolve.
    schema = {**content[media]["schema"], "components": spec["components"]}
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(resp.json)]
    assert errors == [], (template, resp.status, errors)


def test_real_answers_validate_against_the_documented_schemas(
        spec: dict[str, Any], plane: RunningStack, tmp_path: Path) -> None:
    called: set[str] = set()

    def call(template: str, method: str, path: str, body: Any = None, who: str = "alice",
             tenant: str = "ores", status: int | None = None) -> Response:
        called.add(spec["paths"][template][method.lower()]["x-gateway-action"])
        resp = admin(plane, method, path, body, who=who, tenant=tenant)
        if status is not None:
            assert resp.status == status, resp.body
        check(spec, template, resp, method)
        return resp

    # Issue (201), list (200), rotate (200), revoke (200) a certificate.
    _, csr = make_key_and_csr(spiffe_uri(plane.stack.trust_domain, "ores", "service", "api"))
    issued = call("/admin/certs", "POST", "/admin/certs",
                  {"tenant": "ores", "kind": "service", "name": "api", "csr": csr.decode(),
                   "reason": "schema check"}, status=201).json
    call("/admin/certs", "GET", "/admin/certs?tenant=ores", status=200)
    _, csr2 = make_key_and_csr(spiffe_uri(plane.stack.trust_domain, "ores", "service", "api"))
    rotated = call("/admin/certs/{serial}/rotate", "POST",
                   f"/admin/certs/{issued['serial']}/rotate",
                   {"csr": csr2.decode(), "overlap_s": 60, "reason": "schema check"},
                   status=200).json
    call("/admin/certs/{serial}/revoke", "POST", f"/admin/certs/{rotated['serial']}/revoke",
         {"code": "superseded", "reason": "schema check"}, status=200)
    # Dual control: the CA rotation waits (202), is shown, approved by ivan.
    waiting = call("/admin/ca/rotate", "POST", "/admin/ca/rotate",
                   {"overlap_s": 3600, "reason": "schema check"}, status=202).json
    call("/admin/pending", "GET", "/admin/pending?status=pending", who="carol", status=200)
    call("/admin/pending/{id}", "GET", f"/admin/pending/{waiting['id']}", status=200)
    call("/admin/pending/{id}/approve", "POST", f"/admin/pending/{waiting['id']}/approve",
         {"reason": "planned"}, who="ivan", status=200)
    # Keys, review, vault, break-glass, usage, consultations, the audit key.
    call("/admin/keys/rotate", "POST", "/admin/keys/rotate", {"reason": "schema check"},
         status=200)
    call("/admin/keys", "GET", "/admin/keys", who="carol", status=200)
    call("/admin/review", "GET", "/admin/review", who="carol", status=200)
    call("/admin/review", "GET", "/admin/review?format=csv", who="carol", status=200)
    call("/admin/vault/secrets", "GET", "/admin/vault/secrets", status=200)
    case = call("/admin/breakglass/requests", "POST", "/admin/breakglass/requests",
                {"account": "hes-admin", "ticket": "CHG-1", "duration_s": 600,
                 "reason": "schema check"}, who="dave", status=201).json
    call("/admin/breakglass/requests/{case}/deny", "POST",
         f"/admin/breakglass/requests/{case['id']}/deny", {"reason": "not now"}, who="bob",
         status=200)
    call("/admin/breakglass", "GET", "/admin/breakglass", status=200)
    call("/admin/lockbox", "GET", "/admin/lockbox", who="carol", status=200)
    call("/admin/lockbox", "GET", "/admin/lockbox?format=csv", who="carol", status=200)
    call("/admin/usage", "GET", "/admin/usage?period=week", who="carol", status=200)
    call("/admin/consultations", "GET", "/admin/consultations", who="carol", status=200)
    call("/admin/audit/rotate-key", "POST", "/admin/audit/rotate-key",
         {"reason": "schema check"}, status=200)
    # Refusals: problem documents, each listed for its route.
    call("/admin/certs", "GET", "/admin/certs", who="api", status=403)
    call("/admin/keys/rotate", "POST", "/admin/keys/rotate", {}, status=400)
    call("/admin/pending/{id}", "GET", "/admin/pending/P-000000000000", status=404)
    call("/admin/certs", "POST", "/admin/certs",
         {"tenant": "ores", "kind": "service", "name": "api", "csr": "not a CSR",
          "reason": "schema check"}, status=422)
    call("/admin/usage", "GET", "/admin/usage?period=decade", who="carol", status=400)
    call("/admin/pending/{id}/approve", "POST", f"/admin/pending/{waiting['id']}/approve",
         {"reason": "again"}, who="ivan", status=409)
    # Each operation's x-gateway-action is the action its audit events name.
    audited = {e["action"] for e in plane.audit_events() if e.get("event") == "admin"}
    assert called <= audited, sorted(called - audited)
