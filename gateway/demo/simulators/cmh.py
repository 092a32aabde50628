"""The Connect My Home portal.

One request per household and address, up to five connections, each
addressed to one operator (electricity, gas, water, telecom), one
coordinating DSO. The portal lists a request to everyone who takes part and
answers it whole: trimming it to each operator's own connection plus the
minimum site data, and keeping energy EANs from telecom operators, is the
gateway's job (DOMAIN, Connect My Home request).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from aiohttp import web

from gateway.demo._dataset import Dataset, canary_records
from gateway.demo.simulators._common import (
    Record,
    SimError,
    json_body,
    json_response,
    misrouting,
    other,
    tenant_of,
)

STATUSES = frozenset({"requested", "planned", "in-progress", "done", "cancelled"})


@dataclass
class CmhData:
    requests: dict[str, Record]  # id -> request (own copy; statuses change)
    # D1: the isolation canaries, served by id only (never listed).
    canaries: dict[str, Record] = field(default_factory=dict)


CMH = web.AppKey("cmh_data", CmhData)


def takes_part(req: Record, tenant: str) -> bool:
    return bool(req["coordinator"] == tenant
                or any(c["operator"] == tenant for c in req["connections"]))


def _foreign(request: web.Request, *, besides: str = "") -> Record | None:
    """A request the caller has no part in: what a misrouting portal hands out."""
    tenant = tenant_of(request)
    return other(list(request.app[CMH].requests.values()),
                 lambda r: r["id"] != besides and not takes_part(r, tenant))


def _request(request: web.Request) -> Record:
    data, rid = request.app[CMH], request.match_info["id"]
    req = data.requests.get(rid) or data.canaries.get(rid)
    if req is None:
        raise SimError(404, "not-found", "unknown request")
    return req


async def list_requests(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    out = [r for r in request.app[CMH].requests.values() if takes_part(r, tenant)]
    if misrouting(request) and (stray := _foreign(request)) is not None:
        out.append(stray)
    return json_response({"requests": out})


async def get_request(request: web.Request) -> web.Response:
    if misrouting(request) and (stray := _foreign(
            request, besides=request.match_info["id"])) is not None:
        return json_response(stray)
    return json_response(_request(request))


async def set_status(request: web.Request) -> web.Response:
    req = _request(request)
    cid = request.match_info["cid"]
    conn = next((c for c in req["connections"] if c["id"] == cid), None)
    if conn is None:
        raise SimError(404, "not-found", "unknown connection for this request")
    body = await json_body(request)
    status = body.get("status")
    if status not in STATUSES:
        raise SimError(400, "bad-request", f"status must be one of {', '.join(sorted(STATUSES))}")
    conn["status"] = status
    if misrouting(request):
        # The update went through, but the answer is another operator's connection.
        tenant = tenant_of(request)
        stray = next((c for r in request.app[CMH].requests.values() for c in r["connections"]
                      if c["operator"] != tenant and c["id"] != cid), None)
        if stray is not None:
            return json_response(stray)
    return json_response(conn)


def setup(app: web.Application, dataset: Dataset) -> None:
    app[CMH] = CmhData({r["id"]: r for r in copy.deepcopy(dataset.cmh_requests)},
                       copy.deepcopy(canary_records(dataset, "cmh-request")))
    app.router.add_get("/requests", list_requests)
    app.router.add_get("/requests/{id}", get_request)
    app.router.add_post("/requests/{id}/connections/{cid}/status", set_status)
