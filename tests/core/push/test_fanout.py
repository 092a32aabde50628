"""Connect My Home fan-out: each operator its own connection, telecom never
an energy EAN, the coordinator the whole request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.core.model import Relation
from gateway.core.push.fanout import (
    CMH_QUARANTINE_REASONS,
    CMH_REQUEST,
    CMH_REQUEST_CONNECTION,
    FanoutRejected,
    booking_quarantine,
    request_connection_id,
    split_request,
)
from gateway.core.relations.index import RelationIndex

KINDS = {"ores": "dso", "resa": "dso", "swde": "water", "proximus": "telecom",
         "orange": "telecom", "lumen-energie": "supplier"}
COORDINATORS = frozenset({"ores", "resa"})
EAN = "541448860012075359"


def booking() -> dict[str, Any]:
    return {"id": "CMH20260099", "coordinator": "ores", "status": "open",
            "site": {"street": "Rue 1", "postal_code": "5000", "city": "Namur",
                     "requested_date": "2026-12-20", "household": {"name": "H"},
                     "eans": [EAN], "cadastral_parcel": "92001A"},
            "connections": [
                {"id": "C1", "operator": "ores", "utility": "electricity", "ean": EAN},
                {"id": "C2", "operator": "swde", "utility": "water"},
                {"id": "C3", "operator": "proximus", "utility": "telecom"}]}


def test_each_operator_gets_its_own_part() -> None:
    out = split_request(booking(), KINDS, COORDINATORS)
    assert set(out.parts) == {"ores", "swde", "proximus"}
    assert out.parts["ores"] == booking()  # the coordinator: the whole request
    for op in ("swde", "proximus"):
        part = out.parts[op]
        assert [c["operator"] for c in part["connections"]] == [op]
        assert set(part["site"]) <= {"street", "postal_code", "city", "requested_date",
                                     "household"}
    assert EAN not in repr(out.parts["proximus"])


@pytest.mark.parametrize("change,reason", [
    (lambda b: b.update(coordinator="proximus"), "bad-coordinator"),
    (lambda b: b["connections"].append({"id": "C4", "operator": "lumen-energie"}),
     "bad-operator"),
    (lambda b: b["connections"][2].update(note=f"next to {EAN}"), "ean-for-telecom"),
    (lambda b: b.update(id="../x"), "bad-request-id"),
    (lambda b: b.update(connections=[]), "bad-shape"),
])
def test_bad_bookings_are_refused(change: Any, reason: str) -> None:
    b = booking()
    change(b)
    with pytest.raises(FanoutRejected) as exc:
        split_request(b, KINDS, COORDINATORS)
    assert exc.value.reason == reason


# -- the booking against the trusted feed (D1) ------------------------------------

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
FEED = RelationIndex([
    Relation(CMH_REQUEST, "CMH20260099", "ores", "coordinator"),
    *(Relation(CMH_REQUEST_CONNECTION, request_connection_id("CMH20260099", cid), op,
               "operator") for cid, op in (("C1", "ores"), ("C2", "swde"), ("C3", "proximus"))),
    Relation(CMH_REQUEST, "CMH20260098", "resa", "coordinator"),
    Relation(CMH_REQUEST_CONNECTION, request_connection_id("CMH20260098", "C9"), "orange",
             "operator"),
    # A request whose coordination ended yesterday.
    Relation(CMH_REQUEST, "CMH20260097", "ores", "coordinator", None, NOW - timedelta(days=1)),
])


def test_a_booking_matching_the_feed_passes() -> None:
    assert booking_quarantine(booking(), FEED, NOW) is None
    fewer = booking()
    del fewer["connections"][1]
    assert booking_quarantine(fewer, FEED, NOW) is None  # fewer connections leak nothing


def _changed(change: Any) -> dict[str, Any]:
    b = booking()
    change(b)
    return b


@pytest.mark.parametrize("b,expected", [
    # Reproduced: the portal named RESA as coordinator of an ORES-coordinated request.
    (_changed(lambda b: b.update(coordinator="resa")), ("coordinator-mismatch", None)),
    (_changed(lambda b: b.update(id="CMH20260001")), ("unknown-request", None)),
    (_changed(lambda b: b.update(id="CMH20260097")), ("unknown-request", None)),
    (_changed(lambda b: b["connections"][2].update(operator="orange")),
     ("operator-mismatch", "C3")),
    (_changed(lambda b: b["connections"].append(
        {"id": "C9", "operator": "orange", "utility": "telecom"})),  # another request's
     ("operator-mismatch", "C9")),
    (_changed(lambda b: b["connections"][1].update(id="C7")), ("operator-mismatch", "C7")),
], ids=["coordinator", "unknown", "expired", "operator", "foreign-connection",
        "unknown-connection"])
def test_a_booking_the_feed_contradicts_is_quarantined(
        b: dict[str, Any], expected: tuple[str, str | None]) -> None:
    assert booking_quarantine(b, FEED, NOW) == expected
    assert expected[0] in CMH_QUARANTINE_REASONS


def _refused(change: Any) -> FanoutRejected:
    if callable(change):
        doc: Any = booking()
        change(doc)
    else:
        doc = change
    with pytest.raises(FanoutRejected) as info:
        split_request(doc, KINDS, COORDINATORS)
    return info.value


@pytest.mark.parametrize(("change", "reason", "status", "detail"), [
    (["not", "an", "object"], "request-not-object", 400, "the request must be a JSON object"),
    (lambda b: b.update(id="../x"), "bad-request-id", 400, "id must be a plain identifier"),
    (lambda b: b.update(id=7), "bad-request-id", 400, "id must be a plain identifier"),
    (lambda b: b.update(coordinator="proximus"), "bad-coordinator", 400,
     "the coordinator must be a coordinating DSO"),
    (lambda b: b.update(connections=[]), "bad-shape", 400,
     "a request has a site and at least one connection"),
    (lambda b: b.update(site=["Rue 1"]), "bad-shape", 400,
     "a request has a site and at least one connection"),
    (lambda b: b["connections"].append("C4"), "bad-operator", 400, "unknown operator None"),
    (lambda b: b["connections"].append({"id": "C4", "operator": "lumen-energie"}),
     "bad-operator", 400, "unknown operator 'lumen-energie'"),
    (lambda b: b["connections"].append({"id": 4, "operator": "swde"}), "bad-shape", 400,
     "every connection has an id"),
    (lambda b: b["connections"][2].update(note=f"next to {EAN}"), "ean-for-telecom", 422,
     "an EAN would reach proximus"),
])
def test_each_refusal_says_why_with_its_status(change: Any, reason: str, status: int,
                                               detail: str) -> None:
    """422 only for an EAN that would reach a telecom operator (well formed,
    but not what its part may carry); every other refusal is a 400."""
    refused = _refused(change)
    assert (refused.reason, refused.status, refused.detail) == (reason, status, detail)


def test_each_part_exactly() -> None:
    """What each operator receives, member for member: the request's id and
    coordinator, the site's shared fields with their values, its own
    connections."""
    out = split_request(booking(), KINDS, COORDINATORS)
    assert (out.request_id, out.coordinator) == ("CMH20260099", "ores")
    site = {"street": "Rue 1", "postal_code": "5000", "city": "Namur",
            "requested_date": "2026-12-20", "household": {"name": "H"}}
    assert out.parts["swde"] == {"id": "CMH20260099", "coordinator": "ores", "site": site,
                                 "connections": [booking()["connections"][1]]}
    assert out.parts["proximus"] == {"id": "CMH20260099", "coordinator": "ores", "site": site,
                                     "connections": [booking()["connections"][2]]}


def test_no_part_shares_anything_with_another_or_with_the_booking() -> None:
    """Each tenant's part is its own copy: what one part's receiver path does
    to it reaches neither another tenant's part nor the booking."""
    doc = booking()
    out = split_request(doc, KINDS, COORDINATORS)
    out.parts["swde"]["site"]["household"]["name"] = "changed"
    out.parts["swde"]["site"]["street"] = "changed"
    out.parts["ores"]["site"]["household"]["name"] = "changed too"
    out.parts["ores"]["connections"][0]["utility"] = "changed"
    assert out.parts["proximus"]["site"]["household"] == {"name": "H"}
    assert out.parts["proximus"]["site"]["street"] == "Rue 1"
    assert doc == booking()


def test_a_connection_held_for_a_while_is_read_at_the_instant_asked() -> None:
    feed = RelationIndex([
        Relation(CMH_REQUEST, "CMH20260099", "ores", "coordinator"),
        *(Relation(CMH_REQUEST_CONNECTION, request_connection_id("CMH20260099", cid), op,
                   "operator", NOW - timedelta(days=1), NOW + timedelta(days=1))
          for cid, op in (("C1", "ores"), ("C2", "swde"), ("C3", "proximus")))])
    assert booking_quarantine(booking(), feed, NOW) is None
    assert booking_quarantine(booking(), feed, NOW + timedelta(days=2)) == (
        "operator-mismatch", "C1")
