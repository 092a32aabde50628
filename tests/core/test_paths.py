"""Path strictness and the property that no request target
lets tenant A reach tenant B's resource."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.catalog import default_route_table
from gateway.core.decide import RequestFacts, decide
from gateway.core.paths import MAX_TARGET_BYTES, TargetRejected, check_method, parse_target

from .conftest import EAN_A, EAN_B, METER_ORES, METER_WATER, NOW, build_relations, tenant


@pytest.mark.parametrize("raw,reason", [
    ("/hes/../clearing/access-points", "path-dot-segment"),
    ("/hes/meters/./x", "path-dot-segment"),
    ("/hes/%2e%2e/x", "path-percent-encoded"),
    ("/hes/%2E%2E/x", "path-percent-encoded"),
    ("/hes/meters%2f1SAG", "path-percent-encoded"),
    ("/hes/meters%5c1SAG", "path-percent-encoded"),
    ("/hes/meters/%00", "path-percent-encoded"),
    ("/hes/%252e%252e/x", "path-percent-encoded"),
    ("/hes//meters", "path-empty-segment"),
    ("//hes/meters", "path-empty-segment"),
    ("/hes/meters\\1SAG", "path-bad-character"),
    ("/hes/meters/\x00", "path-bad-character"),
    ("/hes/meters/ 1SAG", "path-bad-character"),
    ("http://evil.example/hes/meters", "target-not-origin-form"),
    ("*", "target-not-origin-form"),
    ("evil.example:443", "target-not-origin-form"),
    ("/hes/meters#x", "target-has-fragment"),
    ("/hes/meters?date=a&date=b", "query-duplicate-parameter"),
    ("/hes/meters?date=%00", "query-control-character"),
    ("/hes/meters?x=<script>", "query-bad-character"),
])
def test_ambiguous_targets_are_400(raw: str, reason: str) -> None:
    with pytest.raises(TargetRejected) as exc:
        parse_target(raw)
    assert exc.value.status == 400 and exc.value.reason == reason


def test_long_target_is_414() -> None:
    with pytest.raises(TargetRejected) as exc:
        parse_target("/hes/" + "a" * 5000)
    assert (exc.value.status, exc.value.reason) == (414, "target-too-long")
    assert str(exc.value) == "target-too-long"


def test_the_target_limit_is_exact() -> None:
    at_limit = "/hes/" + "a" * (MAX_TARGET_BYTES - 5)
    assert len(at_limit) == MAX_TARGET_BYTES
    assert parse_target(at_limit).path == at_limit
    with pytest.raises(TargetRejected):
        parse_target(at_limit + "a")


@pytest.mark.parametrize("raw,reason", [
    # A blank value is a value: "date=&date=X" must not pass as "date=X".
    ("/hes/meters?date=&date=2026-01-01", "query-duplicate-parameter"),
    ("/hes/meters?date&date=2026-01-01", "query-malformed"),  # a name without "="
    ("/hes/meters?date=2026-01-01&", "query-malformed"),
    ("/hes/meters?date=%ff", "query-malformed"),  # not UTF-8
])
def test_queries_are_parsed_strictly(raw: str, reason: str) -> None:
    with pytest.raises(TargetRejected) as exc:
        parse_target(raw)
    assert (exc.value.status, exc.value.reason) == (400, reason)


def test_a_blank_query_value_is_kept() -> None:
    assert parse_target("/hes/meters?date=").query_map == {"date": ""}
    assert parse_target("/?a=1").path == "/"


def test_canonical_target_is_what_is_forwarded() -> None:
    t = parse_target("/clearing/access-points/1/consumption?from=2026-01-01&to=2026-02-01")
    assert t.path == "/clearing/access-points/1/consumption"
    assert t.query_map == {"from": "2026-01-01", "to": "2026-02-01"}
    assert t.upstream_target() == t.path + "?from=2026-01-01&to=2026-02-01"
    assert parse_target("/hes/meters/").path == "/hes/meters"


@pytest.mark.parametrize("method,status", [("TRACE", 405), ("CONNECT", 405), ("FOO", 501),
                                           ("get", 501)])
def test_methods(method: str, status: int) -> None:
    with pytest.raises(TargetRejected) as exc:
        check_method(method)
    reason = "method-forbidden" if status == 405 else "method-unknown"
    assert (exc.value.status, exc.value.reason) == (status, reason)


# --- property: no target lets A reach B's resource ---------------------------

OURS = {METER_ORES: "meter", EAN_A: "ean"}
THEIRS = [METER_WATER, EAN_B, "1SAG0000000002", "INC2"]
PIECES = ["/", "/", "/", "hes", "meters", "clearing", "access-points", "itsm", "tickets",
          "readings", "consumption", "cmh", "requests", METER_ORES, METER_WATER, EAN_A, EAN_B,
          "INC1", "INC2", "..", ".", "%2e", "%2E%2e", "%2f", "%5c", "%00", "%25", "//", "?", "&",
          "=", "#", "\\", ";", ",", "date=2026-06-10", "from=2026-01-01", "to=2026-06-01",
          "serial=", "ean=", "@", ":", "http:", "~", "+", " "]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=9),
       st.sampled_from([("ores", "dso"), ("lumen-energie", "supplier"),
                        ("engie-it", "it-provider")]))
def test_no_target_reaches_another_tenants_resource(pieces: list[str],
                                                    who: tuple[str, str]) -> None:
    raw = "".join(pieces)
    allowed_target(raw, who)


RELATIONS = build_relations()


def allowed_target(raw: str, who: tuple[str, str]) -> bool:
    """True if ``raw`` is accepted and allowed for ``who``; asserts on the way
    that nothing of another tenant is forwarded."""
    relations = RELATIONS
    try:
        target = parse_target(raw)
    except TargetRejected:
        return False
    found = default_route_table().lookup("GET", target.path)
    if found.match is None:
        return False
    caller = tenant(*who)
    decision = decide(caller, found.match.route, RequestFacts(found.match.params,
                                                              target.query_map),
                      relations, NOW)
    if not decision.allowed:
        return False
    forwarded = target.upstream_target()
    for foreign in THEIRS:
        assert foreign not in forwarded, (raw, forwarded)
    for rid in decision.resources:
        kind = found.match.route.resource.kind  # type: ignore[union-attr]
        assert relations.find(kind, rid, caller.tenant.id,
                              found.match.route.grants[caller.tenant.kind], NOW)
    return True


def test_property_is_not_vacuous() -> None:
    # The generator can build targets that are allowed; the property above
    # then checks them. Spot-check a few such compositions.
    assert allowed_target("/hes/meters/" + METER_ORES, ("ores", "dso"))
    assert allowed_target("/hes/meters/" + METER_ORES + "/readings?date=2026-06-10",
                          ("ores", "dso"))
    assert allowed_target("/itsm/tickets/INC1", ("engie-it", "it-provider"))
    assert not allowed_target("/hes/meters/" + METER_WATER, ("ores", "dso"))
