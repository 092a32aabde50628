"""Connect My Home fan-out: each operator its own connection, telecom never
an energy EAN, the coordinator the whole request."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.fanout import FanoutRejected, split_request

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
