"""A problem document's type and its status never disagree (RFC 9457 §3.1:
the type names the problem, the status says it in HTTP's words): every
refusal the admin plane can give, found in the source, gets a type that
may carry its status; a 409 is a "conflict", never a "bad-request"."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from gateway.admin._app import _problem
from gateway.problem import (
    PROBLEM_STATUSES,
    PROBLEMS,
    consistent,
    own_slug_for,
    problem_body,
    slug_for,
)

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"
BASE = "urn:shared-grid-gateway:problem:"
# What aiohttp's router and body limit answer on the admin plane (the
# every_answer_audited middleware makes them problem documents too), and a failure.
ROUTING_STATUSES = {404, 405, 413, 500}


def _literal_calls(name: str) -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "demo" in path.relative_to(PACKAGE).parts:
            continue  # the simulators stand for the shared systems
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name \
                    and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, int):
                found.append((f"{path.relative_to(PACKAGE)}:{node.lineno}", node))
    return found


def admin_statuses() -> set[int]:
    """Every status an admin refusal is raised with: ``AdminRefused(409, ...)``
    in the admin plane, the PKI and the vault, ``Refusal(409, ...)`` of the
    break-glass rules (gateway.core.breakglass)."""
    calls = _literal_calls("AdminRefused") + _literal_calls("Refusal")
    return {node.args[0].value for _, node in calls}  # type: ignore[attr-defined]


def test_the_source_is_scanned() -> None:
    statuses = admin_statuses()
    # The scan finds what is known to be there (else it would vouch for nothing).
    assert {400, 403, 404, 409, 413, 422, 501} <= statuses


@pytest.mark.parametrize("status", sorted(admin_statuses() | ROUTING_STATUSES))
def test_every_admin_refusal_has_a_type_of_its_status(status: int) -> None:
    doc = json.loads(_problem(status, "why").body)  # type: ignore[arg-type]
    slug = doc["type"].removeprefix(BASE)
    assert doc["status"] == status
    assert slug in PROBLEMS and doc["title"] == PROBLEMS[slug][0]
    assert consistent(slug, status), f"{status} answered as {slug}"
    assert not slug.startswith("upstream-")  # the gateway's own refusal


def test_a_conflict_is_a_conflict() -> None:
    assert own_slug_for(409) == "conflict"
    assert own_slug_for(422) == "unprocessable-content"
    assert own_slug_for(418) == "refused" and own_slug_for(507) == "internal-error"
    assert not consistent("bad-request", 409) and not consistent("internal-error", 503)


def test_every_type_declares_its_statuses() -> None:
    assert set(PROBLEM_STATUSES) == set(PROBLEMS)
    for status in (*range(400, 432), 500, 501, 502, 503, 504):
        if slug_for(status) != "upstream-refused":  # a status the data plane types itself
            assert consistent(slug_for(status), status), status
        assert consistent(own_slug_for(status), status), status


def test_problem_documents_written_with_a_type_match_their_status() -> None:
    """``problem_body(503, incident, "internal-error")`` would say "Internal
    error" with a 503: each literal pair in the package agrees."""
    calls = _literal_calls("problem_body")
    pairs = [(where, node.args[0].value, node.args[2].value)  # type: ignore[attr-defined]
             for where, node in calls if len(node.args) > 2
             and isinstance(node.args[2], ast.Constant) and node.args[2].value is not None]
    assert pairs  # the audit-failure answer of the data plane at least
    for where, status, slug in pairs:
        assert consistent(slug, status), f"{where}: {status} with type {slug}"
        body = json.loads(problem_body(status, "x", slug))
        assert body["title"] == PROBLEMS[slug][0]


@pytest.mark.parametrize("status", [400, 408, 411, 413, 414, 418, 431, 501, 505])
def test_the_admin_planes_http_layer_types_its_own_refusals(status: int) -> None:
    """What the admin listener refuses before routing (framing, limits) is
    the gateway's refusal too: never "Refused by the shared system"."""
    from gateway.edge import admin_refusal

    doc = json.loads(admin_refusal(None, status, "x").body)  # type: ignore[arg-type,union-attr]
    slug = doc["type"].removeprefix(BASE)
    assert consistent(slug, status) and not slug.startswith("upstream-"), (status, slug)
