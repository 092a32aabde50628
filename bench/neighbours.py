"""Noisy neighbours and a receiver that is down (D1 availability).

Not part of the test suite: a bounded benchmark that prints figures.

1. *Noisy neighbour*: every tenant with data on the IT platform sends a steady
   rate; then one tenant floods with 64 concurrent connections. Reported per
   quiet tenant: errors and p99 in both phases, and the ratio (target: no
   errors, p99 within 3x its baseline).
2. *Receiver down*: HES batches are pushed while all receivers are up, then
   while one is down; reported: the other tenants' delivery latency in both
   phases (target: within 2x).

Run: ``.venv/bin/python bench/neighbours.py`` (about a minute). The gateway
runs in its own process (``gateway serve``), the load here; loopback only,
every loop bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.demo._stack import Stack
from gateway.demo.simulators import CONTROL_HEADER
from gateway.tls._policy import client_context

FLOODER = "kempen-power"
UNITS = {"1SAG": {"obis": "1-0:1.8.1", "unit": "kWh"},
         "2GAS": {"obis": "0-1:24.2.3", "unit": "m3"},
         "3WTR": {"obis": "8-0:1.0.0", "unit": "m3"}}


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


class Harness:
    """The stack's simulators in a background loop; the gateway in a process."""

    def __init__(self, work: Path, tenants: Path) -> None:
        self.stack = Stack(tenants_dir=tenants, certs_dir=work / "certs", work_dir=work / "w",
                           run_gateway=False)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.stack.start(), self.loop).result(60)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.stack.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        asyncio.run_coroutine_threadsafe(self.stack.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.stack.gateway_ports[0]}"

    def ctx(self, tenant: str, name: str = "api") -> Any:
        pki = self.stack.pki
        return client_context(pki.ca_cert, pki.client_cert(tenant, name),
                              pki.client_key(tenant, name))


async def steady(h: Harness, tenant: str, rate: float, seconds: float,
                 out: dict[str, list[float]], errors: dict[str, int]) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=h.ctx(tenant))) as s:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                async with s.get(h.url + "/itsm/tickets") as r:
                    await r.read()
                    if r.status != 200:
                        errors[tenant] += 1
            except aiohttp.ClientError:
                errors[tenant] += 1
            out[tenant].append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - t0)))


async def flood(h: Harness, seconds: float, counts: dict[int, int]) -> None:
    conn = aiohttp.TCPConnector(ssl=h.ctx(FLOODER), limit=64)
    async with aiohttp.ClientSession(connector=conn) as s:
        end = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                try:
                    async with s.get(h.url + "/itsm/tickets") as r:
                        await r.read()
                        counts[r.status] = counts.get(r.status, 0) + 1
                except aiohttp.ClientError:
                    counts[0] = counts.get(0, 0) + 1
        await asyncio.gather(*(worker() for _ in range(64)))


async def noisy_neighbour(h: Harness, seconds: float, rate: float) -> None:
    quiet = [t.id for t in h.stack.registry
             if t.kind in ("dso", "water", "telecom", "supplier", "social-welfare",
                           "clearing-house") and t.id != FLOODER]
    phases: dict[str, tuple[dict[str, list[float]], dict[str, int]]] = {}
    flood_counts: dict[int, int] = {}
    for phase in ("baseline", "flood"):
        lat: dict[str, list[float]] = {t: [] for t in quiet}
        err = dict.fromkeys(quiet, 0)
        jobs = [steady(h, t, rate, seconds, lat, err) for t in quiet]
        if phase == "flood":
            jobs.append(flood(h, seconds, flood_counts))
        await asyncio.gather(*jobs)
        phases[phase] = (lat, err)
    print(f"\nNoisy neighbour: {len(quiet)} tenants at {rate:g} req/s each, {seconds:g} s per "
          f"phase; flood by {FLOODER} (quota 100 req/s) with 64 connections: "
          f"{json.dumps(flood_counts)}")
    print(f"{'tenant':16} {'p99 base ms':>11} {'p99 flood ms':>12} {'ratio':>6} {'errors':>7}")
    ratios = []
    for t in quiet:
        base, fl = p99(phases["baseline"][0][t]), p99(phases["flood"][0][t])
        ratios.append(fl / base)
        errors = phases["baseline"][1][t] + phases["flood"][1][t]
        print(f"{t:16} {base:11.1f} {fl:12.1f} {fl / base:6.2f} {errors:7d}")
    print(f"worst ratio {max(ratios):.2f} (target <= 3), median {statistics.median(ratios):.2f}")


def control(h: Harness, method: str, path: str, body: Any = None) -> Any:
    import http.client
    conn = http.client.HTTPSConnection("127.0.0.1", h.stack.receivers_port,
                                       context=h.ctx("ores"), timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body) if body else None,
                     headers={CONTROL_HEADER: h.stack.control_token})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


async def receiver_down(h: Harness, batches: int) -> None:
    ds = h.stack.dataset
    from datetime import datetime
    day = datetime.fromisoformat(ds.anchor) - timedelta(days=1)
    owners = {m["serial"]: m["owners"][-1]["tenant"] for m in ds.meters
              if not m["airplane_mode"] and len(m["owners"]) == 1}
    results: dict[str, dict[str, list[float]]] = {}
    for phase in ("all-up", "fluvius-down"):
        control(h, "POST", "/_sim/receivers/fluvius/mode",
                {"mode": "down" if phase == "fluvius-down" else "up"})
        lat: dict[str, list[float]] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                ssl=h.ctx("hes-operator", "pusher"))) as s:
            for b in range(batches):
                at = (day + timedelta(minutes=15 * b)).isoformat()
                records = [{"meter": serial, "timestamp": at, "value": 1.0, "quality": "01",
                            **UNITS[serial[:4]]} for serial in owners]
                before = {t: len(control(h, "GET", f"/_sim/received/{t}")["parts"])
                          for t in set(owners.values())}
                t0 = time.perf_counter()
                async with s.post(h.url + "/push/hes/batches", json={
                        "batch_id": f"BENCH-{phase}-{b}", "records": records}) as r:
                    await r.read()
                pending = {t for t in before if t != "fluvius" or phase == "all-up"}
                deadline = time.monotonic() + 10
                while pending and time.monotonic() < deadline:
                    for t in list(pending):
                        if len(control(h, "GET", f"/_sim/received/{t}")["parts"]) > before[t]:
                            lat.setdefault(t, []).append((time.perf_counter() - t0) * 1000)
                            pending.discard(t)
                    await asyncio.sleep(0.01)
        results[phase] = lat
    control(h, "POST", "/_sim/receivers/fluvius/mode", {"mode": "up"})
    print(f"\nReceiver down: {batches} batches per phase; delivery latency (ms, median) of the "
          "others")
    print(f"{'tenant':14} {'all up':>8} {'fluvius down':>13} {'ratio':>6}")
    for t in sorted(results["all-up"]):
        if t == "fluvius" or t not in results["fluvius-down"]:
            continue
        a = statistics.median(results["all-up"][t])
        d = statistics.median(results["fluvius-down"][t])
        print(f"{t:14} {a:8.1f} {d:13.1f} {d / a:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=10, help="per quiet tenant, req/s")
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="neighbours-"))
    tenants = work / "tenants"
    shutil.copytree(REPO / "tenants", tenants)
    flooder = tenants / f"{FLOODER}.toml"
    text = flooder.read_text()
    flooder.write_text(text.replace("\n[[principals]]", "\n[quota]\nrate_per_s = 100\n"
                                    "burst = 100\nconcurrency = 16\n\n[[principals]]", 1))
    h = Harness(work, tenants)
    h.start()
    try:
        asyncio.run(noisy_neighbour(h, args.seconds, args.rate))
        asyncio.run(receiver_down(h, args.batches))
    finally:
        h.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
