"""The clearing system's access register.

Access points of every grid operator with their supplier contracts, the
mandates customers signed, and daily consumption history. The list is
filtered by who asks the way the register does (grid operator, supplier under
contract (D2) or mandate, welfare centre under mandate (D4)); the records
themselves come back whole, ``restricted`` block included: stripping fields
(D3) and bounding history (D4) is the gateway's job.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiohttp import web

from gateway.demo._dataset import Dataset, canary_records
from gateway.demo.simulators._common import (
    Record,
    SimError,
    json_response,
    misrouting,
    now_of,
    other,
    parse_day,
    tenant_kind_of,
    tenant_of,
    unit_hash,
    valid_at,
)

MAX_DAYS = 1200  # the register keeps a bit over three years (D4 allows three)
_REGISTER = {"electricity": ("1-0:1.8.1", "kWh", 4.0, 14.0), "gas": ("0-1:24.2.3", "m3", 0.5, 9.0)}


@dataclass
class ClearingData:
    access_points: dict[str, Record]  # ean -> record (own copy)
    mandates: list[Record]
    # D1: the isolation canaries, served by id only (never listed).
    canaries: dict[str, Record] = field(default_factory=dict)


CLEARING = web.AppKey("clearing_data", ClearingData)


def _mandated(data: ClearingData, ean: str, tenant: str, now: datetime) -> bool:
    return any(md["ean"] == ean and md["holder"] == tenant and valid_at(md, now)
               for md in data.mandates)


def visible(data: ClearingData, ap: Record, tenant: str, kind: str, now: datetime) -> bool:
    """Whether the register lists ``ap`` for a caller of this tenant and kind."""
    if kind == "dso":
        return bool(ap["grid_operator"] == tenant)
    if kind == "supplier":
        # D2: only while a contract runs; D4: or a signed mandate of the customer.
        return any(c["supplier"] == tenant and valid_at(c, now) for c in ap["contracts"]) \
            or _mandated(data, ap["ean"], tenant, now)
    if kind == "social-welfare":
        return _mandated(data, ap["ean"], tenant, now)  # D4: permanent mandates
    return False


def _foreign(request: web.Request, *, besides: str = "") -> Record | None:
    """An access point of another grid operator with which the caller has no
    contract or mandate, ever: what a misrouting register hands out."""
    data, tenant = request.app[CLEARING], tenant_of(request)
    return other(list(data.access_points.values()), lambda ap: (
        ap["ean"] != besides and ap["grid_operator"] != tenant
        and all(c["supplier"] != tenant for c in ap["contracts"])
        and not any(md["ean"] == ap["ean"] and md["holder"] == tenant for md in data.mandates)))


def _access_point(request: web.Request) -> Record:
    data, ean = request.app[CLEARING], request.match_info["ean"]
    ap = data.access_points.get(ean) or data.canaries.get(ean)
    if ap is None:
        raise SimError(404, "not-found", "unknown access point")
    return ap


async def list_access_points(request: web.Request) -> web.Response:
    data, now = request.app[CLEARING], now_of(request)
    tenant, kind = tenant_of(request), tenant_kind_of(request)
    out = [ap for ap in data.access_points.values() if visible(data, ap, tenant, kind, now)]
    if misrouting(request) and (stray := _foreign(request)) is not None:
        out.append(stray)
    return json_response({"access_points": out})


async def get_access_point(request: web.Request) -> web.Response:
    if misrouting(request) and (stray := _foreign(
            request, besides=request.match_info["ean"])) is not None:
        return json_response(stray)
    return json_response(_access_point(request))


def daily(ap: Record, day: str) -> Record:
    register, unit, low, high = _REGISTER.get(ap["energy"], _REGISTER["electricity"])
    value = low + (high - low) * unit_hash(ap["ean"], day)
    return {"ean": ap["ean"], "date": day, "register": register, "value": round(value, 3),
            "unit": unit, "quality": "01"}


async def consumption(request: web.Request) -> web.Response:
    start, end = parse_day(request, "from"), parse_day(request, "to")
    if start > end:
        raise SimError(400, "bad-request", "'from' is after 'to'")
    days = (end - start).days + 1
    if days > MAX_DAYS:
        raise SimError(400, "bad-request", f"at most {MAX_DAYS} days per request")
    ap = _access_point(request)
    out = [daily(ap, (start + timedelta(days=i)).isoformat()) for i in range(days)]
    if misrouting(request) and (stray := _foreign(request, besides=ap["ean"])) is not None:
        out.append(daily(stray, start.isoformat()))
    return json_response({"ean": ap["ean"], "from": start.isoformat(), "to": end.isoformat(),
                          "readings": out})


def setup(app: web.Application, dataset: Dataset) -> None:
    app[CLEARING] = ClearingData(
        {ap["ean"]: ap for ap in copy.deepcopy(dataset.access_points)},
        copy.deepcopy(dataset.mandates), copy.deepcopy(canary_records(dataset, "ean")))
    app.router.add_get("/access-points", list_access_points)
    app.router.add_get("/access-points/{ean}", get_access_point)
    app.router.add_get("/access-points/{ean}/consumption", consumption)
