"""The simulated shared systems, over real sockets (plain HTTP here; the
gateway's own tests put TLS in front)."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.core.model import Caller
from gateway.core.relations.index import parse_instant
from gateway.demo._dataset import Dataset, generate
from gateway.demo.simulators import CONTROL_HEADER, SIMULATOR_NAMES, build_simulator
from gateway.pki._assertion import ASSERTION_HEADER, AssertionSigner, StaticKeySource
from gateway.pki._signing_keys import SigningKey
from gateway.tenants import load_tenants

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = load_tenants(ROOT / "tenants")
NOW = datetime.now(UTC)
DATASET = generate(REGISTRY, NOW)
ANCHOR = parse_instant(DATASET.anchor)
assert ANCHOR is not None
TODAY = ANCHOR.date().isoformat()
YESTERDAY = (ANCHOR - timedelta(days=1)).date().isoformat()
SIGNER = AssertionSigner(SigningKey.generate())
KEYS = StaticKeySource(SIGNER.jwks())
TOKEN = "sim-control-token"
CONTROL = {CONTROL_HEADER: TOKEN}


def assertion(tenant: str, audience: str, signer: AssertionSigner = SIGNER) -> str:
    found = REGISTRY.principal(tenant, "service", "api")
    assert found is not None
    return signer.assertion(Caller(*found), audience)


def meters_of(tenant: str, utility: str | None = None) -> list[dict[str, Any]]:
    return [m for m in DATASET.meters
            if m["owners"][-1]["tenant"] == tenant and m["owners"][-1]["valid_to"] is None
            and utility in (None, m["utility"])]


def moved_meter() -> dict[str, Any]:
    return next(m for m in DATASET.meters if len(m["owners"]) == 2)


def airplane_meter() -> dict[str, Any]:
    return next(m for m in DATASET.meters if m["airplane_mode"])


@dataclass
class Sim:
    name: str
    url: str
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, tenant: str | None = None, *,
                   token: str | None = None, json: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if tenant is not None:
            hdrs[ASSERTION_HEADER] = assertion(tenant, self.name)
        if token is not None:
            hdrs[ASSERTION_HEADER] = token
        async with self.session.request(method, self.url + path, json=json,
                                        headers=hdrs) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()

    async def get(self, path: str, tenant: str | None = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", path, tenant, **kw)

    async def fault(self, mode: str, **extra: Any) -> None:
        status, body = await self.call("POST", "/_sim/fault", json={"mode": mode, **extra},
                                       headers=CONTROL)
        assert status == 200 and body["mode"] == mode

    async def log(self) -> list[dict[str, Any]]:
        status, body = await self.get("/_sim/log", headers=CONTROL)
        assert status == 200
        # Header names are logged too; these tests compare the other fields.
        return [{k: v for k, v in e.items() if k != "headers"} for e in body["requests"]]


Start = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []
    async with aiohttp.ClientSession() as session:

        async def _start(name: str, dataset: Dataset = DATASET) -> Sim:
            runner = web.AppRunner(build_simulator(name, dataset, KEYS, TOKEN),
                                   access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            return Sim(name, f"http://{host}:{port}", session)

        yield _start
    for runner in runners:
        await runner.cleanup()


# -- common behaviour ------------------------------------------------------------


def test_names_and_unknown_simulator() -> None:
    assert SIMULATOR_NAMES == ("hes", "clearing", "cmh", "itsm")
    with pytest.raises(ValueError, match="unknown simulator"):
        build_simulator("scada", DATASET, KEYS, TOKEN)


async def test_healthz_needs_no_assertion_and_is_not_logged(start: Start) -> None:
    sim = await start("itsm")
    assert await sim.get("/healthz") == (200, {"status": "ok"})
    assert await sim.log() == []


async def test_bad_assertions_are_refused_and_logged(start: Start) -> None:
    sim = await start("hes")
    stranger = AssertionSigner(SigningKey.generate())
    cases = {
        "missing": None,
        "malformed": "not-a-jwt",
        "unknown-kid": assertion("fluvius", "hes", stranger),
        "InvalidAudienceError": assertion("fluvius", "clearing"),
    }
    for detail, token in cases.items():
        headers = {ASSERTION_HEADER: token} if token else {}
        status, body = await sim.get("/meters?x=a%26b", headers=headers)
        assert (status, body) == (401, {"error": "invalid-assertion", "detail": detail})
    log = await sim.log()
    assert log == [{"method": "GET", "path": "/meters", "query": "x=a%26b", "tenant": None,
                    "accepted": False}] * len(cases)

    assert (await sim.get("/meters", "fluvius"))[0] == 200
    assert (await sim.log())[-1] == {"method": "GET", "path": "/meters", "query": "",
                                     "tenant": "fluvius", "accepted": True}
    assert await sim.call("DELETE", "/_sim/log", headers=CONTROL) == (200, {"requests": []})
    assert await sim.log() == []


async def test_control_endpoints_refuse_a_wrong_token(start: Start) -> None:
    sim = await start("cmh")
    for headers in ({}, {CONTROL_HEADER: "wrong"}, {CONTROL_HEADER: TOKEN + "x"}):
        assert (await sim.get("/_sim/log", headers=headers))[0] == 403
        assert (await sim.call("DELETE", "/_sim/log", headers=headers))[0] == 403
        assert (await sim.call("POST", "/_sim/fault", json={"mode": "error"},
                               headers=headers))[0] == 403
    assert await sim.get("/_sim/fault", headers=CONTROL) == (200, {"mode": "none",
                                                                   "delay_s": 5.0})
    bad_bodies: list[Any] = [{"mode": "explode"}, {"mode": "slow", "delay_s": "long"}, []]
    for bad in bad_bodies:
        assert (await sim.call("POST", "/_sim/fault", json=bad, headers=CONTROL))[0] == 400
    assert await sim.log() == []  # the control plane is not logged


async def test_unknown_paths_and_methods_answer_json(start: Start) -> None:
    sim = await start("itsm")
    assert await sim.get("/nope", "engie-it") == (404, {"error": "not-found"})
    assert (await sim.call("DELETE", "/tickets", "engie-it"))[0] == 405
    assert (await sim.get("/nope"))[0] == 401  # no assertion: refused before routing


# -- hes -------------------------------------------------------------------------------


async def test_hes_lists_the_meters_a_tenant_owns_now(start: Start) -> None:
    sim = await start("hes")
    moved = moved_meter()["serial"]
    for tenant in ("fluvius", "sibelga", "pidpa", "lumen-energie"):
        status, body = await sim.get("/meters", tenant)
        assert status == 200
        assert {m["serial"] for m in body["meters"]} == {m["serial"] for m in meters_of(tenant)}
        for rec in body["meters"]:
            assert set(rec) == {"serial", "utility", "model", "ean", "airplane_mode",
                                "communicating"}
            assert rec["communicating"] is not rec["airplane_mode"]
        assert (moved in {m["serial"] for m in body["meters"]}) is (tenant == "sibelga")
    assert len((await sim.get("/meters", "pidpa"))[1]["meters"]) == 3

    status, rec = await sim.get(f"/meters/{moved}", "ores")  # the gateway guards, not the HES
    assert status == 200 and rec["serial"] == moved
    assert await sim.get("/meters/1SAG0000000000", "ores") == (404, {
        "error": "not-found", "detail": "unknown meter"})


async def test_hes_readings_per_utility(start: Start) -> None:
    sim = await start("hes")
    for utility, count in (("electricity", 100), ("gas", 24)):
        serial = meters_of("ores", utility)[0]["serial"]
        status, body = await sim.get(f"/meters/{serial}/readings?date={YESTERDAY}", "ores")
        assert status == 200 and body["meter"] == serial and body["date"] == YESTERDAY
        assert len(body["readings"]) == count
        assert all(r["meter"] == serial and r["quality"] == "01"
                   and r["timestamp"].startswith(YESTERDAY) for r in body["readings"])
        assert (await sim.get(f"/meters/{serial}/readings?date={YESTERDAY}", "ores"))[1] == body
    serial = meters_of("ores", "electricity")[0]["serial"]
    body = (await sim.get(f"/meters/{serial}/readings?date={YESTERDAY}", "ores"))[1]
    obis = [r["obis"] for r in body["readings"]]
    assert obis[:4] == ["1-0:1.8.1", "1-0:1.8.2", "1-0:2.8.1", "1-0:2.8.2"]
    assert obis.count("1-0:1.29.0") == 96
    assert body["readings"][5]["timestamp"] == f"{YESTERDAY}T00:15:00+00:00"
    assert body["readings"][-1]["timestamp"] == f"{YESTERDAY}T23:45:00+00:00"

    water = meters_of("pidpa", "water")[0]["serial"]
    status, body = await sim.get(f"/meters/{water}/readings?date={TODAY}", "pidpa")
    assert [(r["obis"], r["unit"]) for r in body["readings"]] == [("8-0:1.0.0", "m3")]
    # Not the caller's meter: the HES gives it nothing of it.
    assert (await sim.get(f"/meters/{water}/readings?date={TODAY}", "ores"))[1]["readings"] == []

    for query in ("", "?date=yesterday", "?date=20261126", "?date=2026-02-30"):
        status, body = await sim.get(f"/meters/{serial}/readings{query}", "ores")
        assert status == 400 and body["error"] == "bad-request"


async def test_hes_owner_change_splits_the_day(start: Start) -> None:
    sim = await start("hes")
    serial = moved_meter()["serial"]
    path = f"/meters/{serial}/readings?date={YESTERDAY}"
    before = (await sim.get(path, "fluvius"))[1]["readings"]
    after = (await sim.get(path, "sibelga"))[1]["readings"]
    noon = f"{YESTERDAY}T12:00:00+00:00"
    assert len(before) == 4 + 48 and all(r["timestamp"] < noon for r in before)
    assert len(after) == 48 and all(r["timestamp"] >= noon for r in after)
    assert len({r["timestamp"] for r in before + after if r["obis"] == "1-0:1.29.0"}) == 96
    assert len((await sim.get(f"/meters/{serial}/readings?date={TODAY}", "fluvius"))[1][
        "readings"]) == 0
    assert len((await sim.get(f"/meters/{serial}/readings?date={TODAY}", "sibelga"))[1][
        "readings"]) == 100


async def test_hes_airplane_mode_and_operations(start: Start) -> None:
    dataset = copy.deepcopy(DATASET)
    sim = await start("hes", dataset)
    meter = airplane_meter()
    serial, owner = meter["serial"], meter["owners"][0]["tenant"]
    ops = f"/meters/{serial}/operations"
    body = (await sim.get(f"/meters/{serial}/readings?date={YESTERDAY}", owner))[1]
    assert body["readings"] == []  # D5: airplane mode sends nothing
    for op in ("disconnect", "connect", "airplane-mode-on"):
        assert await sim.call("POST", ops, owner, json={"operation": op}) == (409, {
            "error": "airplane-mode", "detail": "meter communication is disabled"})

    status, rec = await sim.call("POST", ops, owner, json={"operation": "airplane-mode-off"})
    assert status == 200 and rec["airplane_mode"] is False and rec["communicating"] is True
    status, rec = await sim.call("POST", ops, owner, json={"operation": "disconnect"})
    assert status == 200 and rec["relay"] == "disconnected"
    assert rec["last_operation"]["operation"] == "disconnect"
    status, rec = await sim.call("POST", ops, owner,
                                 json={"operation": "set-power-limit", "limit_kw": 6.5})
    assert status == 200 and rec["power_limit_kw"] == 6.5 and rec["relay"] == "disconnected"
    body = (await sim.get(f"/meters/{serial}/readings?date={YESTERDAY}", owner))[1]
    assert len(body["readings"]) == 100

    for bad in ({"operation": "explode"}, {"operation": "set-power-limit"},
                {"operation": "set-power-limit", "limit_kw": -1}, ["connect"]):
        assert (await sim.call("POST", ops, owner, json=bad))[0] == 400
    async with sim.session.post(sim.url + ops, data=b"{not json",
                                headers={ASSERTION_HEADER: assertion(owner, "hes")}) as resp:
        assert resp.status == 400
    assert (await sim.call("POST", "/meters/nope/operations", owner,
                           json={"operation": "connect"}))[0] == 404
    # The simulator worked on its own copy.
    assert dataset.meters == DATASET.meters


# -- clearing ------------------------------------------------------------------------------


def _eans(body: dict[str, Any]) -> set[str]:
    return {ap["ean"] for ap in body["access_points"]}


async def test_clearing_lists_per_tenant_kind(start: Start) -> None:
    sim = await start("clearing")
    ores = {ap["ean"] for ap in DATASET.access_points if ap["grid_operator"] == "ores"}
    assert _eans((await sim.get("/access-points", "ores"))[1]) == ores

    status, body = await sim.get("/access-points", "mosa-energie")
    assert status == 200 and body["access_points"]
    mandated = {md["ean"] for md in DATASET.mandates if md["holder"] == "mosa-energie"}
    for ap in body["access_points"]:
        running = [c for c in ap["contracts"] if c["supplier"] == "mosa-energie"
                   and c["valid_from"] <= NOW.isoformat() < c["valid_to"]]
        assert running or ap["ean"] in mandated
    assert mandated <= _eans(body)
    assert "restricted" in body["access_points"][0]  # whole record; the gateway strips

    welfare = {md["ean"] for md in DATASET.mandates if md["holder"] == "cpas-namur"}
    assert _eans((await sim.get("/access-points", "cpas-namur"))[1]) == welfare
    assert (await sim.get("/access-points", "proximus"))[1] == {"access_points": []}

    ean = DATASET.access_points[0]["ean"]
    assert await sim.get(f"/access-points/{ean}", "proximus") == (200, DATASET.access_points[0])
    assert (await sim.get("/access-points/541400000000000000", "ores"))[0] == 404


async def test_clearing_consumption(start: Start) -> None:
    sim = await start("clearing")
    gas = next(ap for ap in DATASET.access_points if ap["energy"] == "gas")
    path = f"/access-points/{gas['ean']}/consumption"
    status, body = await sim.get(f"{path}?from=2026-01-30&to=2026-02-02", "ores")
    assert status == 200 and (body["from"], body["to"]) == ("2026-01-30", "2026-02-02")
    assert [r["date"] for r in body["readings"]] == [
        "2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"]
    assert {(r["ean"], r["register"], r["unit"]) for r in body["readings"]} == {
        (gas["ean"], "0-1:24.2.3", "m3")}
    assert len((await sim.get(f"{path}?from=2023-01-01&to=2026-04-14", "ores"))[1][
        "readings"]) == 1200
    for query in ("?from=2023-01-01&to=2026-04-15", "?from=2026-02-02&to=2026-02-01",
                  "?from=2026-02-01", "?from=2026-02-01&to=2026-13-01", ""):
        assert (await sim.get(path + query, "ores"))[0] == 400
    assert (await sim.get("/access-points/541400000000000000/consumption"
                          "?from=2026-01-01&to=2026-01-02", "ores"))[0] == 404


# -- cmh ---------------------------------------------------------------------------------


async def test_cmh_lists_and_status(start: Start) -> None:
    sim = await start("cmh", copy.deepcopy(DATASET))
    for tenant in ("ores", "swde", "telenet", "fluvius"):
        expected = {r["id"] for r in DATASET.cmh_requests if r["coordinator"] == tenant
                    or any(c["operator"] == tenant for c in r["connections"])}
        body = (await sim.get("/requests", tenant))[1]
        assert {r["id"] for r in body["requests"]} == expected
    assert expected == set()  # fluvius takes part in none

    req = DATASET.cmh_requests[0]
    assert await sim.get(f"/requests/{req['id']}", "swde") == (200, req)
    assert (await sim.get("/requests/CMH0", "swde"))[0] == 404
    conn = req["connections"][2]
    path = f"/requests/{req['id']}/connections/{conn['id']}/status"
    status, body = await sim.call("POST", path, conn["operator"], json={"status": "planned"})
    assert status == 200 and body == {**conn, "status": "planned"}
    assert (await sim.get(f"/requests/{req['id']}", "swde"))[1]["connections"][2][
        "status"] == "planned"
    assert (await sim.call("POST", path, "swde", json={"status": "lost"}))[0] == 400
    assert (await sim.call("POST", f"/requests/{req['id']}/connections/X-1/status", "swde",
                           json={"status": "done"}))[0] == 404


# -- itsm -----------------------------------------------------------------------------------


async def test_itsm_lists_per_tenant(start: Start) -> None:
    sim = await start("itsm")
    for tenant in ("engie-it", "fluvius", "pidpa"):
        tickets = (await sim.get("/tickets", tenant))[1]["tickets"]
        assert {t["id"] for t in tickets} == {
            t["id"] for t in DATASET.tickets if tenant in (t["client"], t["assignee"])}
        assets = (await sim.get("/assets", tenant))[1]["assets"]
        assert {a["id"] for a in assets} == {
            a["id"] for a in DATASET.assets if tenant in (a["client"], a["maintainer"])}
        assert tickets and assets
    ticket = DATASET.tickets[0]
    assert await sim.get(f"/tickets/{ticket['id']}", "pidpa") == (200, ticket)
    assert (await sim.get("/tickets/INC0", "pidpa"))[0] == 404
    assert (await sim.get(f"/assets/{DATASET.assets[0]['id']}", "pidpa"))[0] == 200
    assert (await sim.get("/assets/AST0", "pidpa"))[0] == 404


# -- faults -----------------------------------------------------------------------------------


async def test_fault_slow_and_error(start: Start) -> None:
    clearing, cmh = await start("clearing"), await start("cmh")
    await clearing.fault("slow", delay_s=0.3)
    assert await clearing.get("/_sim/fault", headers=CONTROL) == (200, {"mode": "slow",
                                                                        "delay_s": 0.3})
    began = time.monotonic()
    status, body = await clearing.get("/access-points", "ores")
    assert status == 200 and body["access_points"]
    assert time.monotonic() - began >= 0.3

    await cmh.fault("error")
    assert await cmh.get("/requests", "ores") == (500, {"error": "simulated failure"})
    assert (await cmh.get("/requests", token="bad"))[0] == 401  # auth still comes first
    await cmh.fault("none")
    assert (await cmh.get("/requests", "ores"))[0] == 200


async def test_fault_reset_drops_the_connection(start: Start,
                                                caplog: pytest.LogCaptureFixture) -> None:
    sim = await start("itsm")
    await sim.fault("reset")
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await sim.get("/tickets", "pidpa")
    await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (await sim.log())[-1]["accepted"] is True
    assert await sim.get("/healthz") == (200, {"status": "ok"})
    await sim.fault("none")
    assert (await sim.get("/tickets", "pidpa"))[0] == 200


async def test_misroute_hes(start: Start) -> None:
    sim = await start("hes")
    await sim.fault("misroute")
    own = {m["serial"] for m in meters_of("ores")}
    listed = [m["serial"] for m in (await sim.get("/meters", "ores"))[1]["meters"]]
    assert set(listed) - own and own <= set(listed)
    serial = meters_of("ores", "electricity")[0]["serial"]
    status, rec = await sim.get(f"/meters/{serial}", "ores")
    assert status == 200 and rec["serial"] not in own
    readings = (await sim.get(f"/meters/{serial}/readings?date={YESTERDAY}", "ores"))[1][
        "readings"]
    assert len(readings) == 101
    paired = next(m["serial"] for m in DATASET.meters if m["paired_with"] == serial)
    assert readings[-1]["meter"] == paired and readings[-1]["timestamp"].startswith(YESTERDAY)


async def test_misroute_clearing(start: Start) -> None:
    sim = await start("clearing")
    await sim.fault("misroute")
    own = {ap["ean"] for ap in DATASET.access_points if ap["grid_operator"] == "ores"}
    listed = (await sim.get("/access-points", "ores"))[1]["access_points"]
    assert {ap["grid_operator"] for ap in listed} - {"ores"}
    ean = sorted(own)[0]
    assert (await sim.get(f"/access-points/{ean}", "ores"))[1]["ean"] not in own
    body = (await sim.get(f"/access-points/{ean}/consumption?from={YESTERDAY}&to={TODAY}",
                          "ores"))[1]
    assert body["ean"] == ean and len(body["readings"]) == 3
    assert body["readings"][-1]["ean"] not in own


async def test_misroute_cmh(start: Start) -> None:
    sim = await start("cmh", copy.deepcopy(DATASET))
    await sim.fault("misroute")
    mine = {r["id"] for r in DATASET.cmh_requests if r["coordinator"] == "resa"
            or any(c["operator"] == "resa" for c in r["connections"])}
    listed = {r["id"] for r in (await sim.get("/requests", "resa"))[1]["requests"]}
    assert listed - mine and mine <= listed
    rid = sorted(mine)[0]
    assert (await sim.get(f"/requests/{rid}", "resa"))[1]["id"] not in mine
    req = next(r for r in DATASET.cmh_requests if r["id"] == rid)
    conn = next(c for c in req["connections"] if c["operator"] == "resa")
    status, body = await sim.call("POST", f"/requests/{rid}/connections/{conn['id']}/status",
                                  "resa", json={"status": "done"})
    assert status == 200 and body["operator"] != "resa"


async def test_misroute_itsm(start: Start) -> None:
    sim = await start("itsm")
    await sim.fault("misroute")
    for kind, partner in (("tickets", "assignee"), ("assets", "maintainer")):
        listed = (await sim.get(f"/{kind}", "pidpa"))[1][kind]
        assert [r for r in listed if "pidpa" not in (r["client"], r[partner])]
        own = next(r for r in listed if r["client"] == "pidpa")
        assert (await sim.get(f"/{kind}/{own['id']}", "pidpa"))[1]["client"] != "pidpa"
