"""Classification labels (D11): who may receive a C1..C4 response."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.classification import (
    LABELS,
    ClassificationPolicy,
    Label,
    classify,
    may_receive,
    principal_id,
)
from gateway.core.model import Caller, Principal, Tenant

KINDS = {"ores": "dso", "engie-it": "it-provider", "fluvius": "dso"}


def person(tenant_id: str, name: str, team: str | None, kind: str = "person") -> Caller:
    p = Principal(tenant_id, kind, name, frozenset({"reader"}), team)
    return Caller(Tenant(tenant_id, tenant_id, KINDS[tenant_id],
                         principals={(kind, name): p}), p)


OWNERS = frozenset({"ores"})
POLICY = ClassificationPolicy(
    c3_teams=frozenset({"grid-ops"}),
    c4_principals=frozenset({"ores/person/grace"}),
    contracted=frozenset({"engie-it"}),
)
CALLERS = {
    "owner-right-team": person("ores", "dave", "grid-ops"),
    "owner-other-team": person("ores", "carol", "internal-audit"),
    "named-c4": person("ores", "grace", "soc"),
    "contracted-external": person("engie-it", "erin", "engie-support"),
    "foreign-tenant": person("fluvius", "api", None, "service"),
}
# Expected reason per (caller, C1..C4); a leading "!" marks a denial.
EXPECTED = {
    "owner-right-team": ("c1-public", "c2-internal", "c3-team", "!c4-not-named"),
    "owner-other-team": ("c1-public", "c2-internal", "!c3-not-in-team", "!c4-not-named"),
    "named-c4": ("c1-public", "c2-internal", "!c3-not-in-team", "c4-named"),
    "contracted-external": ("c1-public", "c2-internal", "!c3-not-in-team", "!c4-not-named"),
    "foreign-tenant": ("c1-public", "!c2-not-internal", "!c3-not-internal", "!c4-not-named"),
}
MATRIX = [(who, label, EXPECTED[who][i]) for who in CALLERS for i, label in enumerate(LABELS)]


@pytest.mark.parametrize(("who", "label", "expected"), MATRIX)
def test_matrix(who: str, label: Label, expected: str) -> None:
    decision = may_receive(label, CALLERS[who], OWNERS, POLICY)
    allowed = not expected.startswith("!")
    assert decision.allowed is allowed
    assert decision.reason == "classification-" + expected.lstrip("!")
    assert decision.status == (200 if allowed else 403)


def test_c3_is_internal_and_team_both() -> None:
    # A contracted external in the right team: internal (C2) and in the team.
    ext = person("engie-it", "erin", "grid-ops")
    assert may_receive("C3", ext, OWNERS, POLICY).allowed
    # A foreign tenant whose team happens to share the name: not internal.
    foreign = person("fluvius", "dave", "grid-ops")
    assert may_receive("C3", foreign, OWNERS, POLICY).reason == "classification-c3-not-internal"
    # A principal with no team never reaches C3.
    assert not may_receive("C3", person("ores", "api", None, "service"), OWNERS, POLICY).allowed


def test_c4_needs_the_exact_name_not_ownership() -> None:
    # Same name, other kind: not the named person.
    svc = person("ores", "grace", "soc", kind="service")
    assert may_receive("C4", svc, OWNERS, POLICY).reason == "classification-c4-not-named"
    # Naming is what counts: a named person of another tenant receives C4 ...
    named_ext = ClassificationPolicy(c4_principals=frozenset({"engie-it/person/erin"}))
    assert may_receive("C4", CALLERS["contracted-external"], OWNERS, named_ext).allowed
    # ... and nobody does when nobody is named.
    assert not any(may_receive("C4", c, OWNERS, ClassificationPolicy()).allowed
                   for c in CALLERS.values())


def test_c2_owners_come_from_the_response_check() -> None:
    carol = CALLERS["owner-other-team"]
    assert not may_receive("C2", carol, frozenset({"fluvius"}), POLICY).allowed
    assert not may_receive("C2", carol, frozenset(), POLICY).allowed
    assert may_receive("C2", carol, frozenset({"fluvius", "ores"}), POLICY).allowed


def test_an_unknown_label_from_untyped_code_is_denied() -> None:
    bogus: Any = "C5"
    d = may_receive(bogus, CALLERS["named-c4"], OWNERS, POLICY)
    assert (d.allowed, d.status, d.reason) == (False, 403, "classification-unknown-label")


def test_principal_id_uses_the_authenticated_tenant() -> None:
    assert principal_id(CALLERS["named-c4"]) == "ores/person/grace"


@pytest.mark.parametrize(("header", "label"), [
    ("C1", "C1"), ("C2", "C2"), ("C3", "C3"), ("C4", "C4"),
    ("c4", "C4"), (" c3\t", "C3"), ("\nC1 ", "C1"),
])
def test_classify_valid(header: str, label: str) -> None:
    assert classify(header, POLICY) == label


@pytest.mark.parametrize("header", [
    "", " ", "C0", "C5", "C", "4", "C 4", "C4,C1", "C4;", "confidential", "C\uff11", "CC4",
])
def test_classify_garbage_is_none_so_the_caller_fails_closed(header: str) -> None:
    assert classify(header, POLICY) is None


def test_classify_absent_uses_the_default() -> None:
    assert classify(None, POLICY) == "C2"
    assert classify(None, ClassificationPolicy(default="C4")) == "C4"


@pytest.mark.parametrize("kwargs", [
    {"default": "C9"},
    {"default": "c2"},
    {"c4_principals": frozenset({"ores/grace"})},
    {"c4_principals": frozenset({"ores/robot/grace"})},
    {"c4_principals": frozenset({"ores//grace"})},
    {"c3_teams": frozenset({""})},
    {"contracted": frozenset({""})},
])
def test_policy_rejects_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ClassificationPolicy(**kwargs)


def test_a_route_policy_is_checked_when_it_is_built() -> None:
    """D11: a mistyped audience stops start-up, naming the key; a valid one builds."""
    policy = ClassificationPolicy(default="C3", c3_teams=frozenset({"it-ops"}),
                                  c4_principals=frozenset({"ores/service/ciso-desk"}),
                                  contracted=frozenset({"engie-it"}))
    assert policy.c3_teams == {"it-ops"}
    for kwargs, key in [
        ({"default": "C5"}, "default: 'C5' is not one of C1, C2, C3, C4"),
        ({"c3_teams": frozenset({""})}, "c3_teams: ''"),
        ({"c3_teams": frozenset({3})}, "c3_teams: 3"),
        ({"contracted": frozenset({""})}, "contracted: ''"),
        ({"contracted": frozenset({7})}, "contracted: 7"),
        ({"c4_principals": frozenset({"ores/ciso-desk"})}, "c4_principals: 'ores/ciso-desk'"),
        ({"c4_principals": frozenset({"ores//ciso-desk"})}, "c4_principals"),
        ({"c4_principals": frozenset({"ores/robot/ciso-desk"})},
         "c4_principals: 'ores/robot/ciso-desk' must read tenant/kind/name with kind one "
         "of person, service"),
        ({"c4_principals": frozenset({5})}, "c4_principals: 5"),
    ]:
        with pytest.raises(ValueError) as exc:
            ClassificationPolicy(**kwargs)  # type: ignore[arg-type]
        assert str(exc.value).startswith(key), str(exc.value)
