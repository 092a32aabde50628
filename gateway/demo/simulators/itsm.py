"""The outsourced IT provider's service-management platform (D9).

Tickets and assets of every client on one platform. A client sees its own;
the provider sees what it is assigned or maintains, with the client's data
in it: pseudonymising that for the provider (D9) is the gateway's job.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from aiohttp import web

from gateway.demo._dataset import Dataset, canary_records
from gateway.demo.simulators._common import (
    Handler,
    Record,
    SimError,
    json_response,
    misrouting,
    other,
    tenant_of,
)


@dataclass
class Collection:
    """One kind of record, and the field naming the provider's part in it."""

    plural: str  # list key and path segment: "tickets", "assets"
    partner: str  # "assignee" (tickets), "maintainer" (assets); "internal" = nobody
    records: dict[str, Record]
    # D1: the isolation canaries, served by id only (never listed).
    canaries: dict[str, Record] = field(default_factory=dict)

    def mine(self, rec: Record, tenant: str) -> bool:
        return bool(rec["client"] == tenant or rec[self.partner] == tenant)


@dataclass
class ItsmData:
    tickets: Collection
    assets: Collection


ITSM = web.AppKey("itsm_data", ItsmData)


def _foreign(coll: Collection, tenant: str, besides: str = "") -> Record | None:
    """Another client's record the caller has no part in (misroute)."""
    return other(list(coll.records.values()),
                 lambda r: r["id"] != besides and not coll.mine(r, tenant))


LISTED = frozenset({"C1", "C2"})


def _labelled(response: web.Response, label: str) -> web.Response:
    """The platform labels every answer (D11); the gateway enforces it."""
    response.headers["X-Classification"] = label
    return response


def _handlers(pick: str) -> tuple[Handler, Handler]:
    def coll_of(request: web.Request) -> Collection:
        data = request.app[ITSM]
        return data.tickets if pick == "tickets" else data.assets

    async def list_records(request: web.Request) -> web.StreamResponse:
        coll, tenant = coll_of(request), tenant_of(request)
        # D11: restricted (C3) and confidential (C4) tickets are never listed.
        out = [r for r in coll.records.values() if coll.mine(r, tenant)
               and r.get("classification", "C2") in LISTED]
        if misrouting(request) and (stray := _foreign(coll, tenant)) is not None:
            out.append(stray)
        return _labelled(json_response({coll.plural: out}), "C2")

    async def get_record(request: web.Request) -> web.StreamResponse:
        coll, rid = coll_of(request), request.match_info["id"]
        if misrouting(request) and (stray := _foreign(coll, tenant_of(request), rid)) is not None:
            return json_response(stray)
        rec = coll.records.get(rid) or coll.canaries.get(rid)
        if rec is None:
            raise SimError(404, "not-found", f"unknown {pick[:-1]}")
        return _labelled(json_response(rec), str(rec.get("classification", "C2")))

    return list_records, get_record


async def person(request: web.Request) -> web.StreamResponse:
    """The platform's employee directory, by national register number."""
    nrn = request.match_info["nrn"]
    rec = next((p for p in request.app[PERSONS] if p["nrn"] == nrn), None)
    if rec is None:
        raise SimError(404, "not-found", "unknown person")
    return _labelled(json_response(rec), "C2")


PERSONS = web.AppKey("itsm_persons", list)


def setup(app: web.Application, dataset: Dataset) -> None:
    app[ITSM] = ItsmData(
        Collection("tickets", "assignee", {t["id"]: t for t in copy.deepcopy(dataset.tickets)},
                   copy.deepcopy(canary_records(dataset, "ticket"))),
        Collection("assets", "maintainer", {a["id"]: a for a in copy.deepcopy(dataset.assets)}))
    app[PERSONS] = copy.deepcopy(dataset.persons)
    app.router.add_get("/persons/{nrn}", person)
    for pick in ("tickets", "assets"):
        list_records, get_record = _handlers(pick)
        app.router.add_get(f"/{pick}", list_records)
        app.router.add_get(f"/{pick}/{{id}}", get_record)
