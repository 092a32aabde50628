"""The smart-meter Head-End System (D5).

It holds the meters of every grid operator and water company in one
inventory, including water meters whose data travels through a DSO's
electricity meter: the same device chain carries two companies' data. The
inventory knows who owned a meter when, so readings come back only for the
periods the caller owned the meter; everything else (who may see which meter
at all) is the gateway's job. Readings are computed on demand from a hash,
never stored: the HES must not keep the data (D5).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from gateway.demo._dataset import Dataset, canary_records
from gateway.demo._partner_tls import FollowedTls
from gateway.demo.simulators._common import (
    Record,
    SimError,
    json_body,
    json_response,
    misrouting,
    now_of,
    other,
    parse_day,
    tenant_of,
    unit_hash,
    valid_at,
)

# Tariff 1 is day, 2 is night; 1.8 offtake, 2.8 injection (DOMAIN, readings).
REGISTERS = ("1-0:1.8.1", "1-0:1.8.2", "1-0:2.8.1", "1-0:2.8.2")
LOAD_PROFILE = "1-0:1.29.0"
GAS = "0-1:24.2.3"
WATER = "8-0:1.0.0"
# The prepayment function works in airplane mode too (D5, "with the exception
# of the prepayment function").
PREPAYMENT = frozenset({"prepayment-top-up", "prepayment-emergency-credit"})
OPERATIONS = frozenset({"connect", "disconnect", "set-power-limit",
                        "airplane-mode-on", "airplane-mode-off", *PREPAYMENT})
_EPOCH = date(2020, 1, 1)  # registers count up from here, so indexes grow day by day
_PUBLIC = ("serial", "utility", "model", "ean", "airplane_mode")


@dataclass
class HesData:
    meters: dict[str, Record]  # serial -> this simulator's own copy, with device state
    # Where the daily push goes (the gateway's intake) and how the HES connects:
    # its client identity and the trust bundle as they are at each push.
    push_url: str | None = None
    push_tls: FollowedTls | None = None
    # D1: the isolation canaries, served by serial only (never listed or pushed).
    canaries: dict[str, Record] = field(default_factory=dict)


def configure_push(app: web.Application, url: str, tls: FollowedTls) -> None:
    """The HES pushes its daily batch to ``url`` with the client identity in
    ``tls``, re-read when its files change (a new CA in the trust bundle)."""
    app[HES].push_url = url
    app[HES].push_tls = tls


async def daily_push(request: web.Request) -> web.Response:
    """``POST /_sim/push`` (control): build yesterday's (or ``date``'s) batch of
    every communicating meter, labelled with the HES's idea of each owner, and
    push it; answers what the gateway answered. With the misroute fault the HES
    labels each water reading for the DSO whose electricity meter carried it.
    A refusal is reported as the gateway's (``refused_by``, its ``problem``)."""
    data = request.app[HES]
    if data.push_url is None or data.push_tls is None:
        raise SimError(409, "push-not-configured")
    doc = await json_body(request)
    day = date.fromisoformat(str(doc.get("date") or
                                 (now_of(request) - timedelta(days=1)).date().isoformat()))
    columnar = doc.get("format") == "meter-days/v1"
    batch_id = str(doc.get("batch_id") or default_batch_id(day, columnar=columnar))
    if columnar:
        batch = {"format": "meter-days/v1", "batch_id": batch_id,
                 "source": "hes", "meter_days": _meter_days(request, day)}
    else:
        batch = _records_batch(request, batch_id, day)
    async with aiohttp.ClientSession() as session, session.post(
            data.push_url, json=batch, ssl=data.push_tls.context) as resp:
        answer = await resp.json(content_type=None)
    out: Record = {"status": resp.status, "batch_id": batch_id, "answer": answer}
    if resp.status >= 400:
        # The refusal is the gateway's (its intake answered), not this system's:
        # say so, with the gateway's own problem type and title.
        out["refused_by"] = "gateway"
        if isinstance(answer, dict):
            out["problem"] = {k: answer.get(k) for k in ("type", "title", "detail", "incident")}
    return json_response(out)


def default_batch_id(day: date, *, columnar: bool = False) -> str:
    """The id of the daily push of ``day`` when the control call names none
    (a batch id is unique per source system: another batch under it is 409)."""
    return f"HES-{day.isoformat()}-days" if columnar else f"HES-{day.isoformat()}"


def _meter_days(request: web.Request, day: date) -> list[Record]:
    """The columnar form: per meter one object per day and register, quarter-hours
    for electricity, hours for gas and water, each cut where the owner changed
    and labelled with the owner of its first reading (the misroute fault labels
    water for the DSO that carried it)."""
    data = request.app[HES]
    start = datetime.combine(day, time(), UTC)
    out: list[Record] = []
    for meter in data.meters.values():
        if meter["airplane_mode"]:
            continue  # D5: a meter in airplane mode sends nothing
        serial = str(meter["serial"])
        obis, unit, step = {"water": (WATER, "m3", 3600), "gas": (GAS, "m3", 3600)}.get(
            meter["utility"], (LOAD_PROFILE, "kWh", 900))
        instants = [start + timedelta(seconds=step * i) for i in range(86_400 // step)]
        owners = [owner_at(meter, at) for at in instants]
        via = meter.get("paired_with")
        first = 0
        for i in range(1, len(instants) + 1):
            if i < len(instants) and owners[i] == owners[first]:
                continue
            owner = owners[first]
            if owner is not None:
                label = owner
                if misrouting(request) and via and via in data.meters:
                    label = owner_at(data.meters[via], instants[first]) or owner
                rec: Record = {
                    "meter": serial, "start": instants[first].isoformat(), "interval": step,
                    "obis": obis, "unit": unit,
                    "values": [round(0.02 + 0.6 * unit_hash(serial, at.isoformat()), 3)
                               for at in instants[first:i]],
                    "quality": "01" * (i - first), "operator": label}
                if via:
                    rec["via"] = via
                out.append(rec)
            first = i
    return out


def _records_batch(request: web.Request, batch_id: str, day: date) -> Record:
    data = request.app[HES]
    at = datetime(day.year, day.month, day.day, 6, tzinfo=UTC)
    records = []
    for meter in data.meters.values():
        owner = owner_at(meter, at)
        if meter["airplane_mode"] or owner is None:
            continue  # D5: a meter in airplane mode sends nothing
        obis, unit = {"water": (WATER, "m3"), "gas": (GAS, "m3")}.get(
            meter["utility"], ("1-0:1.8.1", "kWh"))
        label = owner
        via = meter.get("paired_with")
        if misrouting(request) and via and via in data.meters:
            label = owner_at(data.meters[via], at) or owner
        rec: Record = {"meter": meter["serial"], "timestamp": at.isoformat(), "obis": obis,
                       "value": round(unit_hash(meter["serial"], day.isoformat()) * 100, 3),
                       "unit": unit, "quality": "01", "operator": label}
        if via:
            rec["via"] = via
        records.append(rec)
    return {"batch_id": batch_id, "source": "hes", "records": records}


HES = web.AppKey("hes_data", HesData)


def owner_at(meter: Record, at: datetime) -> str | None:
    return next((str(o["tenant"]) for o in meter["owners"] if valid_at(o, at)), None)


def owned_by(meter: Record, tenant: str, at: datetime) -> bool:
    return any(o["tenant"] == tenant and valid_at(o, at) for o in meter["owners"])


def meter_rec(meter: Record) -> Record:
    """What the HES tells about a meter: never its owners nor its pairing."""
    rec = {k: meter[k] for k in _PUBLIC}
    rec["communicating"] = not meter["airplane_mode"]
    return rec


def _reading(serial: str, at: datetime, obis: str, value: float, unit: str) -> Record:
    return {"meter": serial, "timestamp": at.isoformat(), "obis": obis,
            "value": round(value, 3), "unit": unit, "quality": "01"}


def _index(serial: str, obis: str, day: date, base: float, per_day: float) -> float:
    """A cumulative register: a per-meter start value plus a per-meter daily rate."""
    days = (day - _EPOCH).days
    return base * (1 + unit_hash(serial, obis, "base")) + days * per_day * (
        0.5 + unit_hash(serial, obis, "rate"))


def day_readings(meter: Record, day: date) -> list[Record]:
    """Everything the meter pushes for ``day`` (once a day, D5), ignoring ownership."""
    serial = str(meter["serial"])
    start = datetime.combine(day, time(), UTC)
    if meter["utility"] == "electricity":
        out = [_reading(serial, start, obis, _index(serial, obis, day,
                                                    8000.0 if ".1.8." in obis else 900.0,
                                                    6.0 if ".1.8." in obis else 1.5), "kWh")
               for obis in REGISTERS]
        for q in range(96):
            at = start + timedelta(minutes=15 * q)
            out.append(_reading(serial, at, LOAD_PROFILE,
                                0.02 + 0.6 * unit_hash(serial, at.isoformat()), "kWh"))
        return out
    if meter["utility"] == "gas":
        return [_reading(serial, at, GAS, 0.02 + 0.4 * unit_hash(serial, at.isoformat()), "m3")
                for at in (start + timedelta(hours=h) for h in range(24))]
    return [_reading(serial, start, WATER, _index(serial, WATER, day, 150.0, 0.3), "m3")]


def _meter(request: web.Request) -> Record:
    data, serial = request.app[HES], request.match_info["serial"]
    meter = data.meters.get(serial) or data.canaries.get(serial)
    if meter is None:
        raise SimError(404, "not-found", "unknown meter")
    return meter


def _foreign(request: web.Request, *, besides: str = "") -> Record | None:
    """A meter another tenant owns now: what a misrouting HES hands out."""
    tenant, now = tenant_of(request), now_of(request)
    return other(list(request.app[HES].meters.values()),
                 lambda m: m["serial"] != besides and owner_at(m, now) not in (None, tenant))


async def list_meters(request: web.Request) -> web.Response:
    tenant, now = tenant_of(request), now_of(request)
    meters = [meter_rec(m) for m in request.app[HES].meters.values() if owned_by(m, tenant, now)]
    if misrouting(request) and (stray := _foreign(request)) is not None:
        meters.append(meter_rec(stray))
    return json_response({"meters": meters})


async def get_meter(request: web.Request) -> web.Response:
    # The upstream is dumb: any meter to anyone; the gateway guards (D1).
    if misrouting(request) and (stray := _foreign(
            request, besides=request.match_info["serial"])) is not None:
        return json_response(meter_rec(stray))
    return json_response(meter_rec(_meter(request)))


async def readings(request: web.Request) -> web.Response:
    day = parse_day(request, "date")
    meter = _meter(request)
    tenant = tenant_of(request)
    out: list[Record] = []
    if not meter["airplane_mode"]:  # D5: airplane mode sends nothing
        # A meter that changed owner during the day: each owner gets its part.
        out = [r for r in day_readings(meter, day)
               if owned_by(meter, tenant, datetime.fromisoformat(r["timestamp"]))]
    if misrouting(request):
        out.extend(_stray_reading(request, meter, day))
    return json_response({"meter": meter["serial"], "date": day.isoformat(), "readings": out})


def _stray_reading(request: web.Request, meter: Record, day: date) -> list[Record]:
    """One reading of another tenant's meter; preferably the water meter paired
    with this one (water data travelling through the electricity meter, D5)."""
    tenant = tenant_of(request)
    meters = list(request.app[HES].meters.values())
    noon = datetime.combine(day, time(12), UTC)
    stray = other(meters, lambda m: m["paired_with"] == meter["serial"]
                  and not owned_by(m, tenant, noon))
    if stray is None:
        stray = other(meters, lambda m: not any(o["tenant"] == tenant for o in m["owners"]))
    return day_readings(stray, day)[:1] if stray is not None else []


async def operate(request: web.Request) -> web.Response:
    meter = _meter(request)
    body = await json_body(request)
    op = body.get("operation")
    if op not in OPERATIONS:
        raise SimError(400, "bad-request",
                       f"operation must be one of {', '.join(sorted(OPERATIONS))}")
    # DOMAIN: communication disabled means no remote operations at all.
    if meter["airplane_mode"] and op != "airplane-mode-off" and op not in PREPAYMENT:
        raise SimError(409, "airplane-mode", "meter communication is disabled")
    if op == "connect":
        meter["relay"] = "connected"
    elif op == "disconnect":
        meter["relay"] = "disconnected"
    elif op == "set-power-limit":
        limit = body.get("limit_kw")
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 1000:
            raise SimError(400, "bad-request", "limit_kw must be a number in (0, 1000]")
        meter["power_limit_kw"] = float(limit)
    elif op in PREPAYMENT:
        meter["prepayment_credits"] = meter.get("prepayment_credits", 0) + 1
    else:
        meter["airplane_mode"] = op == "airplane-mode-on"
    meter["last_operation"] = {"operation": op, "at": now_of(request).isoformat()}
    return json_response(_device(meter))


def _device(meter: Record) -> dict[str, Any]:
    rec = meter_rec(meter)
    rec.update({k: meter[k] for k in ("relay", "power_limit_kw", "last_operation")})
    return rec


def setup(app: web.Application, dataset: Dataset) -> None:
    meters: dict[str, Record] = {}
    for m in copy.deepcopy(dataset.meters):
        m.update({"relay": "connected", "power_limit_kw": None, "last_operation": None})
        meters[m["serial"]] = m
    canaries = canary_records(dataset, "meter")
    for m in canaries.values():
        m.update({"relay": "connected", "power_limit_kw": None, "last_operation": None})
    app[HES] = HesData(meters, canaries=canaries)
    app.router.add_get("/meters", list_meters)
    app.router.add_get("/meters/{serial}", get_meter)
    app.router.add_get("/meters/{serial}/readings", readings)
    app.router.add_post("/meters/{serial}/operations", operate)
    app.router.add_post("/_sim/push", daily_push)
