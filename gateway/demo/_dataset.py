"""The demo dataset: what the four shared systems hold, and the relation feed
the gateway trusts on its own.

In production the relations come from the access register (contracts,
mandates) and the HES inventory (meter ownership). In the demo one
deterministic generator produces both the simulators' data and the relation
feed, from the tenants in ``tenants/`` and an anchor date, so a test knows
exactly which records belong to whom. The gateway loads only the relation
feed; an upstream's answer never vouches for itself.

Scenarios built in on purpose:

- a water meter of each water company paired with a DSO's electricity meter
  (water data travelling through the electricity meter, D5);
- a meter that changed owner yesterday at noon (fluvius -> sibelga);
- a meter in airplane mode (communication disabled, D5);
- a supplier switch during a drop: the old supplier initiated a drop, the new
  supplier's contract has started; the new one must not learn of it (D3);
- an expired contract (D2), a welfare centre's permanent mandates and a
  supplier holding a customer's signed mandate (D4);
- Connect My Home requests coordinated by ORES and RESA with water and
  telecom partners;
- IT-provider tickets and assets, some assigned to the provider (D9).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.core.identifiers import with_check_digit, with_nrn_check
from gateway.core.model import Relation
from gateway.core.occupancy import OCCUPANCY, OCCUPANT, occupancy_id
from gateway.core.push.fanout import CMH_REQUEST_CONNECTION, request_connection_id
from gateway.core.push.records import ACCESS_POINT, METER_EAN, meter_ean_id
from gateway.core.relations.index import parse_instant, relation_record
from gateway.files import write_private
from gateway.tenants import TenantRegistry

DAY = timedelta(days=1)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


@dataclass
class Dataset:
    anchor: str
    meters: list[dict[str, Any]] = field(default_factory=list)
    access_points: list[dict[str, Any]] = field(default_factory=list)
    mandates: list[dict[str, Any]] = field(default_factory=list)
    cmh_requests: list[dict[str, Any]] = field(default_factory=list)
    tickets: list[dict[str, Any]] = field(default_factory=list)
    assets: list[dict[str, Any]] = field(default_factory=list)
    persons: list[dict[str, Any]] = field(default_factory=list)
    # D2, D4: who lives at an access point, and since when (the customer
    # portal's proof, with the meter number): {customer, ean, grid_operator,
    # valid_from, valid_to}.
    occupancies: list[dict[str, Any]] = field(default_factory=list)
    # Isolation canaries (D1): synthetic records, one per tenant and system,
    # each {kind, owner, record}; the simulators serve them by id (never in a
    # list or a push), the feed marks them (kind, id, owner, "canary").
    canaries: list[dict[str, Any]] = field(default_factory=list)

    # -- the relation feed -------------------------------------------------
    def relations(self) -> list[Relation]:
        rels: list[Relation] = []
        for m in self.meters:
            for own in m["owners"]:
                rels.append(Relation("meter", m["serial"], own["tenant"], "owner",
                                     parse_instant(own["valid_from"]),
                                     parse_instant(own["valid_to"])))
            if m["airplane_mode"]:
                # D5: communication disabled at the customer's request (tenant "*").
                rels.append(Relation("meter", m["serial"], "*", "airplane-mode"))
        for ap in self.access_points:
            rels.append(Relation("ean", ap["ean"], ap["grid_operator"], "grid-operator"))
            # The meter at this access point (D1: a pushed reading's EAN is checked).
            rels.append(Relation(METER_EAN, meter_ean_id(ap["meter"]["serial"], ap["ean"]),
                                 ap["grid_operator"], ACCESS_POINT))
            for c in ap["contracts"]:
                rels.append(Relation("ean", ap["ean"], c["supplier"], "supplier",
                                     parse_instant(c["valid_from"]),
                                     parse_instant(c["valid_to"])))
            if ap["restricted"]:
                # D3: who started the drop, as the register records it, from the
                # drop's start until it takes effect; the gateway reads this, never
                # the clearing answer's own "initiator".
                drop = ap["restricted"]
                rels.append(Relation("ean", ap["ean"], drop["initiator"], "drop-initiator",
                                     parse_instant(drop["started"]),
                                     parse_instant(drop["effective"])))
        for oc in self.occupancies:
            rels.append(Relation(OCCUPANCY, occupancy_id(oc["customer"], oc["ean"]),
                                 oc["grid_operator"], OCCUPANT,
                                 parse_instant(oc["valid_from"]), parse_instant(oc["valid_to"])))
        for md in self.mandates:
            rels.append(Relation("ean", md["ean"], md["holder"], "mandate",
                                 parse_instant(md["valid_from"]), parse_instant(md["valid_to"])))
        for req in self.cmh_requests:
            rels.append(Relation("cmh-request", req["id"], req["coordinator"], "coordinator"))
            for op in sorted({c["operator"] for c in req["connections"]}):
                rels.append(Relation("cmh-request", req["id"], op, "participant"))
            for c in req["connections"]:
                rels.append(Relation("cmh-connection", c["id"], c["operator"], "operator"))
                # The connections of this request (a pushed booking is checked, D1).
                rels.append(Relation(CMH_REQUEST_CONNECTION,
                                     request_connection_id(req["id"], c["id"]),
                                     c["operator"], "operator"))
        for t in self.tickets:
            rels.append(Relation("ticket", t["id"], t["client"], "owner"))
            if t["assignee"] != "internal":
                rels.append(Relation("ticket", t["id"], t["assignee"], "assignee"))
        for person in self.persons:
            rels.append(Relation("person", person["nrn"], person["employer"], "owner"))
        for a in self.assets:
            rels.append(Relation("asset", a["id"], a["client"], "owner"))
            if a["maintainer"] != "internal":
                rels.append(Relation("asset", a["id"], a["maintainer"], "maintainer"))
        for canary in self.canaries:
            rels.extend(canary_relations(canary["kind"], canary["owner"], canary["record"]))
        return rels

    # -- files ---------------------------------------------------------------
    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write ``dataset.json`` (simulators) and ``relations.json`` (gateway)."""
        directory.mkdir(parents=True, exist_ok=True)
        data_path = directory / "dataset.json"
        rel_path = directory / "relations.json"
        # SECURITY: both hold tenant data (customers, mandates): owner-only (0600).
        write_private(data_path, json.dumps(asdict(self), indent=1).encode())
        write_private(rel_path, json.dumps(
            {"anchor": self.anchor, "relations": [relation_record(r) for r in self.relations()]},
            indent=1).encode())
        return data_path, rel_path

    @classmethod
    def load(cls, path: Path) -> Dataset:
        return cls(**json.loads(path.read_text()))




def _digits(seed: str, n: int) -> str:
    """n deterministic digits derived from a seed string."""
    out = ""
    counter = 0
    while len(out) < n:
        out += str(int.from_bytes(hashlib.sha256(f"{seed}/{counter}".encode()).digest()[:8],
                                  "big"))
        counter += 1
    return out[:n]


def generate(registry: TenantRegistry, now: datetime | None = None) -> Dataset:
    """Build the demo dataset around ``now`` (its midnight UTC is the anchor)."""
    now = now or datetime.now(UTC)
    anchor = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    ds = Dataset(anchor=anchor.isoformat())
    dsos = [t for t in registry if t.kind == "dso"]
    suppliers = [t for t in registry if t.kind == "supplier"]
    welfare = [t for t in registry if t.kind == "social-welfare"]
    hes_water = [t for t in registry
                 if t.kind == "water" and "hes_consortium" in t.memberships]
    elec_by_dso: dict[str, list[str]] = {}

    # ---- HES meters and clearing access points, per DSO ----
    for d_i, dso in enumerate(dsos):
        prefix = dso.ean_prefix or f"5414{60 + d_i}"
        elec_by_dso[dso.id] = []
        for n in range(6):
            energy = "electricity" if n < 4 else "gas"
            serial = ("1SAG" if energy == "electricity" else "2GAS") + _digits(f"{dso.id}{n}", 10)
            ean = with_check_digit(prefix + _digits(f"ean{dso.id}{n}", 17 - len(prefix)))
            meter = {"serial": serial, "utility": energy, "ean": ean, "paired_with": None,
                     "airplane_mode": False, "model": "Sagemcom T211" if energy ==
                     "electricity" else "Itron G4",
                     "owners": [{"tenant": dso.id, "valid_from": None, "valid_to": None}]}
            ds.meters.append(meter)
            if energy == "electricity":
                elec_by_dso[dso.id].append(serial)
            first = suppliers[(d_i + n) % len(suppliers)].id
            second = suppliers[(d_i + n + 1) % len(suppliers)].id
            contracts = [
                {"supplier": second, "valid_from": _iso(anchor - 1200 * DAY),
                 "valid_to": _iso(anchor - 400 * DAY)},  # expired (D2)
                {"supplier": first, "valid_from": _iso(anchor - 400 * DAY),
                 "valid_to": _iso(anchor + 365 * DAY)},
            ]
            restricted = None
            if n == 1:
                # D3: the current supplier started a drop; a new supplier's
                # contract has just started (switch). Only the grid operator
                # and the initiator may see the restricted block.
                contracts[1]["valid_to"] = _iso(anchor + 7 * DAY)
                contracts.append({"supplier": second, "valid_from": _iso(anchor - 1 * DAY),
                                  "valid_to": _iso(anchor + 700 * DAY)})
                restricted = {"drop_in_progress": True, "prepayment_active": False,
                              "social_supplier": False, "initiator": first,
                              "started": _iso(anchor - 20 * DAY),
                              "effective": contracts[1]["valid_to"]}
            for c in contracts:
                c["supplier_gln"] = registry.tenants[str(c["supplier"])].gln
            ds.access_points.append({
                "ean": ean, "energy": energy, "grid_operator": dso.id,
                "grid_operator_gln": dso.gln, "region": "wallonia" if dso.id in ("ores", "resa")
                else ("brussels" if dso.id == "sibelga" else "flanders"),
                "meter": {"serial": serial, "type": "smart", "communicating": True},
                "address": {"street": f"Rue de la Station {n + 1}", "postal_code":
                            f"{5000 + d_i * 100 + n}", "city": f"Commune {d_i}-{n}"},
                # D2: the customer's data as the current supplier sent them in
                # its market messages; only that supplier reads them.
                "customer": {"id": f"cust-{dso.id}-{n}", "name": f"Customer {dso.id}-{n}",
                             "supplied_by": first},
                "contracts": contracts, "restricted": restricted})
            # D2, D4: the current occupant moved in two years ago; the one before
            # lived there for four years until then.
            moved_in = anchor - 730 * DAY
            ds.occupancies.append({"customer": f"cust-{dso.id}-{n}", "ean": ean,
                                   "grid_operator": dso.id, "valid_from": _iso(moved_in),
                                   "valid_to": None})
            ds.occupancies.append({"customer": f"cust-{dso.id}-{n}-former", "ean": ean,
                                   "grid_operator": dso.id,
                                   "valid_from": _iso(moved_in - 4 * 365 * DAY),
                                   "valid_to": _iso(moved_in)})
    # The meter with communication disabled at the customer's request (D5).
    ds.meters[0]["airplane_mode"] = True
    ds.access_points[0]["meter"]["communicating"] = False
    # A meter that changed owner yesterday at noon.
    moved = next(m for m in ds.meters if m["owners"][0]["tenant"] == "fluvius"
                 and m["utility"] == "electricity" and m["serial"] != elec_by_dso["fluvius"][0])
    switch = anchor - DAY + timedelta(hours=12)
    moved["owners"] = [{"tenant": "fluvius", "valid_from": None, "valid_to": _iso(switch)},
                       {"tenant": "sibelga", "valid_from": _iso(switch), "valid_to": None}]
    elec_by_dso["fluvius"].remove(moved["serial"])

    # ---- water meters paired with electricity meters (D5) ----
    # A meter in airplane mode sends nothing, so it carries no water data either.
    airplane = {m["serial"] for m in ds.meters if m["airplane_mode"]}
    carriers = [s for d in dsos for s in elec_by_dso[d.id] if s not in airplane]
    for w_i, water in enumerate(hes_water):
        for n in range(3):
            ds.meters.append({
                "serial": "3WTR" + _digits(f"{water.id}{n}", 10), "utility": "water", "ean": None,
                "paired_with": carriers[(w_i * 3 + n) % len(carriers)], "airplane_mode": False,
                "model": "Kamstrup flowIQ",
                "owners": [{"tenant": water.id, "valid_from": None, "valid_to": None}]})

    # ---- mandates (D4) ----
    by_dso = {d.id: [ap for ap in ds.access_points if ap["grid_operator"] == d.id] for d in dsos}
    for cpas in welfare:
        for ap in by_dso.get("ores", [])[2:5] + by_dso.get("resa", [])[2:3]:
            ds.mandates.append({"ean": ap["ean"], "holder": cpas.id, "kind": "permanent",
                                "valid_from": None, "valid_to": None})
    if suppliers and "fluvius" in by_dso:
        ap = by_dso["fluvius"][3]
        holder = next(s.id for s in suppliers
                      if all(c["supplier"] != s.id for c in ap["contracts"]))
        ds.mandates.append({"ean": ap["ean"], "holder": holder, "kind": "signed",
                            "valid_from": _iso(anchor - 10 * DAY),
                            "valid_to": _iso(anchor + 355 * DAY)})

    _portal(ds, registry, by_dso, anchor)
    _itsm(ds, registry, anchor)
    _canaries(ds, registry, anchor)
    return ds


# The id field of a canary record, by resource kind.
CANARY_ID_FIELDS = {"meter": "serial", "ean": "ean", "cmh-request": "id", "ticket": "id"}


def canary_relations(kind: str, owner: str, record: dict[str, Any]) -> list[Relation]:
    """The feed's tuples of one canary: the owning relation its kind always
    has, and the mark ``(kind, id, owner, "canary")`` the prober reads."""
    rid = str(record[CANARY_ID_FIELDS[kind]])
    owning = {"meter": "owner", "ean": "grid-operator", "cmh-request": "coordinator",
              "ticket": "owner"}[kind]
    rels = [Relation(kind, rid, owner, owning), Relation(kind, rid, owner, "canary")]
    if kind == "cmh-request":
        for conn in record["connections"]:
            rels.append(Relation("cmh-connection", conn["id"], owner, "operator"))
    return rels


def _canaries(ds: Dataset, registry: TenantRegistry, anchor: datetime) -> None:
    """D1: what each shared system's operator seeds for the isolation
    canaries: an HES meter per consortium member, an access point per grid
    operator, a Connect My Home request per coordinator and a ticket per
    client of the IT platform. Synthetic, and said so in each record."""
    note = "isolation canary: synthetic, no customer"
    for t_i, tenant in enumerate(registry):
        if "hes_consortium" in tenant.memberships:
            serial = "1CAN" + _digits(f"canary-meter-{tenant.id}", 10)
            ds.canaries.append({"kind": "meter", "owner": tenant.id, "record": {
                "serial": serial, "utility": "electricity" if tenant.kind == "dso" else "water",
                "ean": None, "paired_with": None, "airplane_mode": False,
                "model": "canary", "note": note,
                "owners": [{"tenant": tenant.id, "valid_from": None, "valid_to": None}]}})
        if tenant.kind == "dso":
            prefix = tenant.ean_prefix or f"5414{70 + t_i}"
            ean = with_check_digit(prefix + _digits(f"canary-ean-{tenant.id}", 17 - len(prefix)))
            ds.canaries.append({"kind": "ean", "owner": tenant.id, "record": {
                "ean": ean, "energy": "electricity", "grid_operator": tenant.id,
                "grid_operator_gln": tenant.gln, "region": "canary",
                "meter": {"serial": "1CAN" + _digits(f"canary-ap-{tenant.id}", 10),
                          "type": "smart", "communicating": True},
                "address": {"street": note, "postal_code": "0000", "city": "canary"},
                "customer": None, "contracts": [], "restricted": None}})
        if tenant.cmh_coordinator:
            rid = f"CANARY-CMH-{tenant.id}"
            ds.canaries.append({"kind": "cmh-request", "owner": tenant.id, "record": {
                "id": rid, "coordinator": tenant.id, "status": "open", "created": _iso(anchor),
                "site": {"street": note, "postal_code": "0000", "city": "canary",
                         "requested_date": anchor.date().isoformat(),
                         "household": {"name": "canary", "phone": "+32 00 00 00 00"},
                         "eans": [], "cadastral_parcel": "00000A"},
                "connections": [{"id": f"{rid}-1", "operator": tenant.id,
                                 "utility": "electricity", "status": "requested",
                                 "ean": None}]}})
        if tenant.kind in ("dso", "water", "telecom", "supplier", "social-welfare",
                           "clearing-house"):
            ds.canaries.append({"kind": "ticket", "owner": tenant.id, "record": {
                "id": f"CANARY-INC-{tenant.id}", "client": tenant.id, "assignee": "internal",
                "title": note, "status": "open", "opened": _iso(anchor),
                "classification": "C2",
                "requester": {"name": "canary", "email": f"canary@{tenant.id}.example"}}})


def canary_records(dataset: Dataset, kind: str) -> dict[str, dict[str, Any]]:
    """The canary records of one kind, by id: what a simulator serves by id."""
    return {str(c["record"][CANARY_ID_FIELDS[kind]]): c["record"]
            for c in dataset.canaries if c["kind"] == kind}


def _portal(ds: Dataset, registry: TenantRegistry, by_dso: dict[str, list[dict[str, Any]]],
            anchor: datetime) -> None:
    """Connect My Home: one household, one address, one connection per operator."""
    plans = [
        ("ores", ["ores:electricity", "ores:gas", "swde:water", "proximus:telecom"]),
        ("ores", ["ores:electricity", "orange:telecom"]),
        ("resa", ["resa:electricity", "swde:water", "telenet:telecom"]),
        ("ores", ["ores:gas", "telenet:telecom", "proximus:telecom"]),
        ("resa", ["resa:gas", "orange:telecom"]),
        ("resa", ["resa:electricity", "proximus:telecom"]),
    ]
    for i, (coordinator, conns) in enumerate(plans):
        if coordinator not in registry.tenants:
            continue
        rid = f"CMH{anchor:%Y}{i + 1:04d}"
        connections = []
        for j, spec in enumerate(conns):
            op, utility = spec.split(":")
            if op not in registry.tenants:
                continue
            conn: dict[str, Any] = {"id": f"{rid}-{j + 1}", "operator": op, "utility": utility,
                                    "status": "requested"}
            if utility in ("electricity", "gas"):
                aps = [a for a in by_dso.get(op, []) if a["energy"] == utility]
                conn["ean"] = aps[i % len(aps)]["ean"] if aps else None
            connections.append(conn)
        ds.cmh_requests.append({
            "id": rid, "coordinator": coordinator, "status": "open",
            "created": _iso(anchor - (10 - i) * DAY),
            "site": {"street": f"Chemin des Travaux {i + 1}", "postal_code": f"{5100 + i}",
                     "city": "Namur" if coordinator == "ores" else "Liège",
                     "requested_date": (anchor + (20 + i) * DAY).date().isoformat(),
                     "household": {"name": f"Household {i + 1}", "phone": f"+32 81 00 00 {i:02d}"},
                     "eans": [c["ean"] for c in connections if c.get("ean")],
                     "cadastral_parcel": f"92{i:03d}A"},
            "connections": connections})


def _itsm(ds: Dataset, registry: TenantRegistry, anchor: datetime) -> None:
    clients = [t for t in registry
               if t.kind in ("dso", "water", "telecom", "supplier", "social-welfare",
                             "clearing-house")]
    provider = next((t.id for t in registry if t.kind == "it-provider"), None)
    n_ticket = 0
    for c_i, client in enumerate(clients):
        for k in range(2):
            n_ticket += 1
            assigned = provider if (provider and k == 0 and client.kind == "dso") else "internal"
            ds.tickets.append({
                "id": f"INC{n_ticket:06d}", "client": client.id, "assignee": assigned,
                "title": ["Meter data export fails", "Access review request"][k],
                "status": "open", "opened": _iso(anchor - (c_i + k) * DAY),
                "classification": "C2",
                "requester": {"name": f"Employee {client.id} {k}",
                              "email": f"employee{k}@{client.id}.example"}})
        if client.id == "ores":
            # D11: a restricted ticket (the IT desk team) and a confidential one
            # (named principals only); never in lists.
            for label, title in (("C3", "Firewall change for the HES link"),
                                 ("C4", "Suspected credential theft")):
                n_ticket += 1
                ds.tickets.append({
                    "id": f"INC{n_ticket:06d}", "client": client.id, "assignee": "internal",
                    "title": title, "status": "open", "opened": _iso(anchor),
                    "classification": label,
                    "requester": {"name": "Employee ores security",
                                  "email": "security@ores.example"}})
        for k in range(2):
            # Fictional national register numbers (valid check digits, D8).
            nine = f"{80 + c_i % 20:02d}{1 + k:02d}{10 + c_i % 18:02d}{100 + c_i * 2 + k:03d}"
            ds.persons.append({"nrn": with_nrn_check(nine), "employer": client.id,
                               "name": f"Employee {client.id} {k}",
                               "email": f"employee{k}@{client.id}.example"})
        ds.assets.append({
            "id": f"AST{c_i + 1:05d}", "client": client.id, "kind": "application-server",
            "hostname": f"app01.{client.id}.example",
            "maintainer": provider if (provider and client.kind == "dso") else "internal"})
