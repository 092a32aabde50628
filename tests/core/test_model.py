"""The domain objects' own rules (gateway.core.model): a relation's window
edges and a tenant's contract window (D9)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from gateway.core.model import Relation, Tenant

from .conftest import DAY, NOW

SECOND = timedelta(seconds=1)
START, END = NOW - 10 * DAY, NOW + 10 * DAY
BOUNDED = Relation("ean", "x", "ores", "supplier", START, END)


@pytest.mark.parametrize(("start", "end", "covered"), [
    (START, END, True),  # the whole relation: valid_from inclusive, valid_to exclusive
    (START, NOW, True),
    (NOW, END, True),
    (START - DAY, NOW, False),  # begins before the relation
    (NOW, END + DAY, False),  # ends after it
    (START - 2 * DAY, START - DAY, False),
])
def test_a_relation_covers_a_window_only_when_it_lies_inside(start: datetime, end: datetime,
                                                             covered: bool) -> None:
    assert BOUNDED.covers(start, end) is covered


def test_an_open_relation_covers_any_window_on_its_open_side() -> None:
    assert Relation("ean", "x", "ores", "supplier").covers(NOW - 9000 * DAY, NOW + 9000 * DAY)
    since = Relation("ean", "x", "ores", "supplier", START, None)
    assert since.covers(START, NOW + 9000 * DAY) and not since.covers(START - DAY, NOW)
    until = Relation("ean", "x", "ores", "supplier", None, END)
    assert until.covers(NOW - 9000 * DAY, END) and not until.covers(NOW, END + DAY)


def contractor(since: datetime | None = None, until: datetime | None = None) -> Tenant:
    return Tenant("engie-it", "ENGIE IT", "it-provider", contract_from=since, contract_until=until)


def test_a_tenant_without_a_contract_window_is_never_refused() -> None:
    t = contractor()
    assert not t.contract_bounded
    assert [t.contract_refusal(NOW + n * 1000 * DAY) for n in (-9, 0, 9)] == [None] * 3


def test_a_contract_serves_from_its_first_instant() -> None:
    # D9: [contract_from, contract_until): the start belongs to the contract.
    t = contractor(since=START)
    assert t.contract_bounded
    assert t.contract_refusal(START - DAY) == "tenant-contract-not-started"
    assert t.contract_refusal(START - SECOND) == "tenant-contract-not-started"
    assert t.contract_refusal(START) is None
    assert t.contract_refusal(NOW + 9000 * DAY) is None  # no end: runs on


def test_a_contract_ends_at_its_end_instant() -> None:
    # D9: an external party works for the operator only while its contract runs.
    t = contractor(until=END)
    assert t.contract_bounded
    assert t.contract_refusal(NOW - 9000 * DAY) is None  # no start: ran before
    assert t.contract_refusal(END - SECOND) is None
    assert t.contract_refusal(END) == "tenant-contract-ended"
    assert t.contract_refusal(END + DAY) == "tenant-contract-ended"


def test_a_contract_with_both_ends() -> None:
    t = contractor(START, END)
    assert [t.contract_refusal(at) for at in (START - DAY, START, NOW, END - SECOND, END)] \
        == ["tenant-contract-not-started", None, None, None, "tenant-contract-ended"]


def test_a_decision_is_allowed_exactly_when_its_verdict_is_allow() -> None:
    """``allowed`` (a getter in C, read on every request) answers what the
    verdict says, however the decision was made."""
    from gateway.core.model import Decision, Verdict

    for decision, allowed in ((Decision.allow("ok"), True), (Decision.deny("no"), False),
                              (Decision(Verdict.ALLOW, "ok"), True),
                              (Decision(Verdict.DENY, "no", 502, ("r",)), False),
                              (Decision.allow("ok")._replace(verdict=Verdict.DENY), False)):
        assert decision.allowed is allowed
    assert [v.allows for v in Verdict] == [True, False]
