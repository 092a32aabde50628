"""The route catalogue of the four shared systems (DESIGN.md §4, §8).

Each route names the relations that grant access per tenant kind. A kind
that is not listed has no access at all (D6). Upstreams receive the path
without the system prefix (``/hes/meters`` -> ``/meters`` on the HES).
"""

from __future__ import annotations

from gateway.core.classification import ClassificationPolicy
from gateway.core.routes import RecordCheck, ResourceRef, Route, RouteTable

_OWNER = frozenset({"owner"})

# --- HES: the smart-meter head-end shared by the seven consortium members (D5)
_HES = {"dso": _OWNER, "water": _OWNER}
_CONSORTIUM = "hes_consortium"
# --- clearing: the access register (D2, D3, D4)
_CLEARING = {
    "dso": frozenset({"grid-operator"}),
    "supplier": frozenset({"supplier", "mandate"}),
    "social-welfare": frozenset({"mandate"}),
}
# --- Connect My Home portal, coordinated by a DSO
_CMH = {
    "dso": frozenset({"coordinator", "participant"}),
    "water": frozenset({"participant"}),
    "telecom": frozenset({"participant"}),
}
_CMH_CONN = {kind: frozenset({"operator"}) for kind in ("dso", "water", "telecom")}
# --- IT provider platform: each client company its own tickets and assets;
# the provider only what is assigned to it (D9: access for maintenance is
# restricted).
_ITSM_CLIENTS = ("dso", "water", "telecom", "supplier", "social-welfare", "clearing-house")
_TICKETS = {**{k: _OWNER for k in _ITSM_CLIENTS}, "it-provider": frozenset({"assignee"})}
_ASSETS = {**{k: _OWNER for k in _ITSM_CLIENTS}, "it-provider": frozenset({"maintainer"})}

_CLEARING_FIELDS = ("clearing.restricted", "clearing.contracts", "clearing.supplier-view",
                    "clearing.customer-view")
# D11 on the IT platform: restricted tickets for ORES's IT desk team, the
# confidential ones for its CISO desk only; the provider is a contracted external.
_ITSM_LABELS = ClassificationPolicy(default="C2", c3_teams=frozenset({"it-ops"}),
                                    c4_principals=frozenset({"ores/service/ciso-desk"}),
                                    contracted=frozenset({"engie-it"}))


def _path(kind: str, name: str) -> ResourceRef:
    return ResourceRef(kind, "path", name)


ROUTES: tuple[Route, ...] = (
    Route("hes", "GET", "/hes/meters", _HES, member_of=_CONSORTIUM,
          records=(RecordCheck("meter", "serial", items="meters"),)),
    Route("hes", "GET", "/hes/meters/{serial}", _HES, member_of=_CONSORTIUM,
          resource=_path("meter", "serial"),
          records=(RecordCheck("meter", "serial", same_as_request=True),)),
    Route("hes", "GET", "/hes/meters/{serial}/readings", _HES, member_of=_CONSORTIUM,
          resource=_path("meter", "serial"), window="date",
          records=(RecordCheck("meter", "meter", items="readings", at_field="timestamp",
                               window_field="timestamp"),)),
    Route("hes", "POST", "/hes/meters/{serial}/operations", _HES, member_of=_CONSORTIUM,
          resource=_path("meter", "serial"), required_role="meter-operator",
          records=(RecordCheck("meter", "serial", same_as_request=True),),
          meter_operation=True, max_body_bytes=16 * 1024),
    Route("clearing", "GET", "/clearing/access-points", _CLEARING,
          records=(RecordCheck("ean", "ean", items="access_points"),),
          field_rules=_CLEARING_FIELDS),
    Route("clearing", "GET", "/clearing/access-points/{ean}", _CLEARING,
          resource=_path("ean", "ean"),
          records=(RecordCheck("ean", "ean", same_as_request=True),),
          field_rules=_CLEARING_FIELDS),
    Route("clearing", "GET", "/clearing/access-points/{ean}/consumption", _CLEARING,
          resource=_path("ean", "ean"), window="history", window_bound=frozenset({"supplier"}),
          records=(RecordCheck("ean", "ean", items="readings", window_field="date"),)),
    Route("cmh", "GET", "/cmh/requests", _CMH,
          records=(RecordCheck("cmh-request", "id", items="requests"),),
          field_rules=("cmh.own-connections",)),
    Route("cmh", "GET", "/cmh/requests/{request_id}", _CMH,
          resource=_path("cmh-request", "request_id"),
          records=(RecordCheck("cmh-request", "id", same_as_request=True),),
          field_rules=("cmh.own-connections",)),
    Route("cmh", "POST", "/cmh/requests/{request_id}/connections/{connection_id}/status",
          _CMH_CONN, resource=_path("cmh-connection", "connection_id"),
          records=(RecordCheck("cmh-connection", "id", same_as_request=True),),
          notify="cmh-status", max_body_bytes=16 * 1024),
    Route("itsm", "GET", "/itsm/tickets", _TICKETS,
          records=(RecordCheck("ticket", "id", items="tickets"),),
          classification=_ITSM_LABELS),
    Route("itsm", "GET", "/itsm/tickets/{ticket_id}", _TICKETS,
          resource=_path("ticket", "ticket_id"),
          records=(RecordCheck("ticket", "id", same_as_request=True),),
          classification=_ITSM_LABELS),
    Route("itsm", "GET", "/itsm/assets", _ASSETS,
          records=(RecordCheck("asset", "id", items="assets"),),
          classification=_ITSM_LABELS),
    Route("itsm", "GET", "/itsm/assets/{asset_id}", _ASSETS,
          resource=_path("asset", "asset_id"),
          records=(RecordCheck("asset", "id", same_as_request=True),),
          classification=_ITSM_LABELS),
)

# D8: national-register lookups (employees of a client company, on the IT
# platform's directory) are purpose-bound.
_PERSONS = {k: _OWNER for k in _ITSM_CLIENTS}
ROUTES = (*ROUTES,
          Route("itsm", "GET", "/itsm/persons/{nrn}", _PERSONS, resource=_path("person", "nrn"),
                records=(RecordCheck("person", "nrn", same_as_request=True),),
                classification=_ITSM_LABELS, sensitive=True))

UPSTREAMS: tuple[str, ...] = ("hes", "clearing", "cmh", "itsm")


def default_route_table() -> RouteTable:
    return RouteTable(ROUTES)
