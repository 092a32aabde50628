"""What must never leave, or never stay (D1, D5, D9, D10), seen from outside:

- the IT provider receives no personal identifier of any class the README
  lists (and IBANs), and no ticket it is not assigned to in the feed, even
  when the platform's own answer says it is;
- the audit trail names who, what and which ids, never the data answered;
- a delivered outbox part keeps no payload (its row has none, the payloads
  table no row of it).

A stack of its own: the tests edit the simulators' records and push a batch.
"""

from __future__ import annotations

import copy
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from gateway.demo.simulators.clearing import CLEARING
from gateway.demo.simulators.itsm import ITSM

from .conftest import RunningStack, start_stack

PROVIDER = "engie-it"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("privacy"))
    yield gw
    gw.stop()


def tickets(gw: RunningStack) -> dict[str, dict[str, Any]]:
    return gw.stack.apps["itsm"][ITSM].tickets.records  # type: ignore[no-any-return]


def assigned(gw: RunningStack, tenant: str, assignee: str) -> dict[str, Any]:
    return next(t for t in tickets(gw).values() if t["client"] == tenant
                and t["assignee"] == assignee and t.get("classification", "C2") == "C2")


class Edited:
    """Edit a simulator record for one test; the original comes back after."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.original = copy.deepcopy(record)

    def __enter__(self) -> dict[str, Any]:
        return self.record

    def __exit__(self, *exc: object) -> None:
        self.record.clear()
        self.record.update(self.original)


# --- D9: one identifier of each class, none in clear ---------------------------------

IBAN = "BE71 0961 2345 6769"
IDENTIFIERS = {
    "ean": "541448860012075359",
    "meter serial": "1SAG1100042062",
    "given name": "Wilhelmina",
    "family name": "Vandersteene",
    "national register number": "85.07.30-033.61",
    "street": "Rue des Canaris 17",
    "phone": "+32 81 55 66 77",
    "national phone": "081 55 66 77",
    "e-mail": "wilhelmina.vandersteene@example.be",
    "iban": IBAN,
    "old account": "539-0075470-34",
}


def test_it_provider_receives_no_identifier_of_any_class(stack: RunningStack) -> None:
    ticket = assigned(stack, "fluvius", PROVIDER)
    with Edited(ticket) as rec:
        rec["requester"] = {
            "given_name": IDENTIFIERS["given name"], "family_name": IDENTIFIERS["family name"],
            "national_register": IDENTIFIERS["national register number"],
            "phone": IDENTIFIERS["national phone"], "email": IDENTIFIERS["e-mail"],
            "iban": IBAN, "bank_account": IDENTIFIERS["old account"],
            "address": {"street": IDENTIFIERS["street"], "postal_code": "5000",
                        "city": "Namur"}}
        rec["site"] = {"ean": IDENTIFIERS["ean"], "meter": IDENTIFIERS["meter serial"]}
        rec["notes"] = (f"refund to {IBAN}; call {IDENTIFIERS['phone']}; "
                        f"meter {IDENTIFIERS['meter serial']} at EAN {IDENTIFIERS['ean']}")
        for path in (f"/itsm/tickets/{rec['id']}", "/itsm/tickets"):
            resp = stack.client(PROVIDER).get(path)
            assert resp.status == 200, resp.body
            text = resp.body.decode()
            leaked = [cls for cls, value in IDENTIFIERS.items() if value in text]
            assert leaked == [], path
            body = resp.json
            got = body if "tickets" not in body else next(
                t for t in body["tickets"] if t["id"] == rec["id"])
            who = got["requester"]
            for field, kind in (("given_name", "name"), ("family_name", "name"),
                                ("iban", "iban"), ("bank_account", "iban"),
                                ("national_register", "nrn"), ("phone", "phone"),
                                ("email", "email")):
                assert who[field].startswith(f"ps_{kind}_"), field
            assert who["address"]["street"].startswith("ps_street_")
            assert who["address"]["city"] == "Namur"
            assert "ps_iban_" in got["notes"] and "ps_phone_" in got["notes"]
        # The client itself reads its own ticket in clear: the pseudonyms are
        # for the provider only.
        own = stack.client("fluvius").get(f"/itsm/tickets/{rec['id']}")
        assert own.status == 200 and IBAN in own.body.decode()


# --- D1/D9: the provider's list, record by record against the feed ------------------

def test_provider_list_with_a_ticket_it_is_not_assigned_to_is_withheld(
        stack: RunningStack) -> None:
    """The platform says engie-it is the assignee of an ORES ticket; the feed
    says nobody is. One such ticket withholds the whole list."""
    stray = assigned(stack, "ores", "internal")
    mine = assigned(stack, "fluvius", PROVIDER)
    assert stack.client(PROVIDER).get("/itsm/tickets").status == 200
    with Edited(stray) as rec:
        rec["assignee"] = PROVIDER
        rec["title"] = "Stray-ticket-canary"
        resp = stack.client(PROVIDER).get("/itsm/tickets")
        assert resp.status == 502
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert b"Stray-ticket-canary" not in resp.body and mine["id"].encode() not in resp.body
        event = next(e for e in stack.audit_events()
                     if e.get("incident") == resp.json["incident"])
        assert event["reason"] == "foreign-record" and event["tenant"] == PROVIDER
        assert stray["id"] in event.get("resources", [])
        # The detail route too.
        one = stack.client(PROVIDER).get(f"/itsm/tickets/{rec['id']}")
        assert one.status == 403 and b"Stray-ticket-canary" not in one.body
    assert stack.client(PROVIDER).get("/itsm/tickets").status == 200


# --- D10: the audit trail never holds what was answered ------------------------------

def audit_text(gw: RunningStack) -> str:
    files = [p for p in gw.stack.work_dir.rglob("audit*") if p.is_file()]
    assert files
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in files)


def test_answers_never_reach_the_audit_log(stack: RunningStack) -> None:
    canary = {"title": "Canary-title-Xq7", "name": "Canary Requester Zw9",
              "email": "canary.zw9@example.be", "street": "Canary Lane 42",
              "customer": "Canary Customer Jk3"}
    ticket = assigned(stack, "ores", "internal")
    ap = next(a for a in stack.stack.apps["clearing"][CLEARING].access_points.values()
              if a["grid_operator"] == "ores")
    with Edited(ticket) as t, Edited(ap) as a:
        t["title"] = canary["title"]
        t["requester"] = {"name": canary["name"], "email": canary["email"]}
        a["customer"] = {"name": canary["customer"]}
        a["address"] = {**a["address"], "street": canary["street"]}
        answered = [stack.client("ores").get(f"/itsm/tickets/{t['id']}"),
                    stack.client("ores").get("/itsm/tickets"),
                    stack.client("ores").get(f"/clearing/access-points/{a['ean']}"),
                    stack.client("ores").get("/clearing/access-points")]
        for resp in answered:
            assert resp.status == 200, resp.body
        served = b"".join(r.body for r in answered).decode()
        for value in canary.values():
            assert value in served  # the answers did carry them...
        # ...and a withheld answer carried one too (the provider's misrouted list).
        t["assignee"] = PROVIDER
        assert stack.client(PROVIDER).get("/itsm/tickets").status == 502
    incidents = [r.headers["x-request-id"] for r in answered]
    events = {e.get("incident"): e for e in stack.audit_events()}
    assert all(i in events for i in incidents)  # each answer has its event
    text = audit_text(stack)
    leaked = [value for value in canary.values() if value in text]
    assert leaked == []


# --- D5: a delivered part keeps no payload -------------------------------------------

def test_a_delivered_outbox_part_keeps_no_payload(stack: RunningStack) -> None:
    ds = stack.stack.dataset
    anchor = datetime.fromisoformat(ds.anchor)
    meter = next(m for m in ds.meters if not m["airplane_mode"] and len(m["owners"]) == 1
                 and m["owners"][0]["tenant"] == "ores" and m["utility"] == "electricity")
    batch = {"batch_id": "HES-PRIV-0001", "source": "hes", "records": [
        {"meter": meter["serial"], "timestamp": (anchor - timedelta(hours=20)).isoformat(),
         "obis": "1-0:1.8.1", "value": 4321.5, "unit": "kWh", "quality": "01"}]}
    resp = stack.client("hes-operator", "pusher").request("POST", "/push/hes/batches",
                                                          body=batch)
    assert resp.status == 202, resp.body
    assert resp.json["queued"] == 1
    db = stack.stack.work_dir / "outbox.db"

    def rows(table: str = "parts") -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(f"SELECT * FROM {table}").fetchall()
        finally:
            conn.close()

    deadline = time.monotonic() + 15
    while not rows() or any(r["status"] != "delivered" for r in rows()):
        assert time.monotonic() < deadline, [dict(r) for r in rows()]
        time.sleep(0.05)
    for row in rows():
        assert "payload" not in list(row.keys())  # the payloads have a table of their own
        assert row["status"] == "delivered"
    assert rows("payloads") == []  # the encrypted records are gone
