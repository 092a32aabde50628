"""Peak memory of one push at the largest accepted size, in a real `gateway serve`.

The Stack (dev PKI, dataset, simulators, receivers) runs in this process's
background thread with ``run_gateway=False``; the gateway runs from its config
in a process of its own, so its RSS is the gateway's alone. ORES's receiver is
down (the parts stay queued and their delivery is retried), and Fluvius polls
``GET /hes/meters`` on a new mTLS connection every 0.1 s during the whole
run. For each form (per-record, ``meter-days/v1``) one batch of ORES readings
as close to the form's cap as the builder gets is posted by the HES operator's
pusher; the gateway's RSS is sampled every 10 ms (VmRSS) and its peak read
from VmHWM. Loopback only; bounded: each push and wait has a deadline.

Usage: .venv/bin/python bench/push_memory.py [--budget-mb 1024]
           [--records-mb 24] [--meter-days-mb 32] [--settle-s 5]
(the defaults are the gateway's own limits)
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.config import EdgeLimits
from gateway.demo._stack import Stack
from gateway.tls._policy import client_context

HOST = "127.0.0.1"
MiB = 1024 * 1024
DEFAULTS = EdgeLimits()


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def ores_meters(stack: Stack) -> list[str]:
    return [m["serial"] for m in stack.dataset.meters
            if [o["tenant"] for o in m["owners"]] == ["ores"] and not m["airplane_mode"]
            and m["utility"] == "electricity"]


def records_body(meters: list[str], day: datetime, limit: int, batch_id: str) -> bytes:
    """Per-record ORES readings (distinct meter, instant and OBIS) up to ``limit`` bytes."""
    head = f'{{"batch_id":"{batch_id}","source":"hes","records":['.encode()
    parts: list[bytes] = []
    size = len(head) + 2
    k = 0
    while True:
        d, rest = divmod(k, 96 * 50)
        q, c = divmod(rest, 50)  # 50 OBIS codes per quarter-hour and day
        at = (day - timedelta(days=d) + timedelta(minutes=15 * q)).isoformat()
        for meter in meters:
            rec = (f'{{"meter":"{meter}","timestamp":"{at}","obis":"1-0:1.8.{c}",'
                   f'"value":{(k % 997) / 10},"unit":"kWh","quality":"01"}}').encode()
            if size + len(rec) + 1 > limit:
                return head + b",".join(parts) + b"]}"
            parts.append(rec)
            size += len(rec) + 1
        k += 1


def days_body(meters: list[str], day: datetime, limit: int, batch_id: str,
              repeat_registers: bool = False) -> bytes:
    """``meter-days/v1`` ORES meter-days of 96 values up to ``limit`` bytes: one
    day of many registers per meter (a daily push), or with ``repeat_registers``
    50 registers per meter over many days (a backlog: the router then keeps a
    set of instants per meter and register, the form's worst case)."""
    head = (f'{{"format":"meter-days/v1","batch_id":"{batch_id}","source":"hes",'
            f'"meter_days":[').encode()
    parts: list[bytes] = []
    size = len(head) + 2
    k = 0
    while True:
        d, c = divmod(k, 50) if repeat_registers else (0, k)
        start = (day - timedelta(days=d)).isoformat()
        for meter in meters:
            values = ",".join(str(((k + i) % 997) / 10) for i in range(96))
            rec = (f'{{"meter":"{meter}","start":"{start}","interval":900,'
                   f'"obis":"1-0:1.8.{c}","unit":"kWh","quality":"{"01" * 96}",'
                   f'"values":[{values}]}}').encode()
            if size + len(rec) + 1 > limit:
                return head + b",".join(parts) + b"]}"
            parts.append(rec)
            size += len(rec) + 1
        k += 1


class Poller(threading.Thread):
    """Fluvius: GET /hes/meters on a new connection every 0.1 s."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        super().__init__(daemon=True)
        self.port, self.ctx = port, ctx
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            conn = http.client.HTTPSConnection(HOST, self.port, context=self.ctx, timeout=10)
            try:
                conn.request("GET", "/hes/meters")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failed.append(str(resp.status))
            except (OSError, http.client.HTTPException) as exc:
                self.failed.append(type(exc).__name__)
            finally:
                conn.close()


def push(port: int, ctx: ssl.SSLContext, body: bytes, pid: int,
         settle_s: float) -> dict[str, Any]:
    before = status_kib(pid, "VmRSS")
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            samples.append(status_kib(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=300)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/push/hes/batches", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        doc = json.loads(resp.read())
    finally:
        conn.close()
    took = time.perf_counter() - t0
    time.sleep(settle_s)
    done.set()
    sampler.join()
    return {"status": resp.status, "received": doc.get("received"),
            "queued": doc.get("queued"), "body_mib": round(len(body) / MiB, 1),
            "seconds": round(took, 2), "rss_before_mib": before // MiB,
            "rss_peak_sampled_mib": max(samples, default=0) // MiB,
            "rss_after_mib": status_kib(pid, "VmRSS") // MiB}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-mb", type=int, default=DEFAULTS.memory_budget_mb)
    ap.add_argument("--records-mb", type=int, default=DEFAULTS.max_push_records_mb)
    ap.add_argument("--meter-days-mb", type=int, default=DEFAULTS.max_push_meter_days_mb)
    ap.add_argument("--settle-s", type=float, default=5.0, help="wait after each push")
    ap.add_argument("--forms", default="records,meter-days,meter-days-backlog")
    ap.add_argument("--receiver-up", action="store_true",
                    help="leave ORES's receiver up (default: down, as in the reproduction)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="push-memory-") as tmp:
        work = Path(tmp)
        stack = Stack(tenants_dir=REPO / "tenants", certs_dir=work / "certs",
                      work_dir=work / "work", run_gateway=False,
                      limits=f"memory_budget_mb = {args.budget_mb}\n"
                             f"max_push_records_mb = {args.records_mb}\n"
                             f"max_push_meter_days_mb = {args.meter_days_mb}\n")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(stack.start(), loop).result(60)
        port, ops_port, _ = stack.gateway_ports
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config",
                                 str(stack.config_path)], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pki = stack.pki
        fluvius = client_context(pki.ca_cert, pki.client_cert("fluvius", "api"),
                                 pki.client_key("fluvius", "api"))
        hes = client_context(pki.ca_cert, pki.client_cert("hes-operator", "pusher"),
                             pki.client_key("hes-operator", "pusher"))
        poller = Poller(port, fluvius)
        results: dict[str, Any] = {}
        try:
            deadline = time.monotonic() + 30
            while True:  # bounded wait for the gateway to serve
                try:
                    conn = http.client.HTTPConnection(HOST, ops_port, timeout=2)
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the gateway did not start")
                time.sleep(0.1)
            # ORES's receiver is down: its part stays queued, deliveries retried.
            conn = http.client.HTTPSConnection(
                HOST, stack.receivers_port, context=client_context(
                    pki.ca_cert, pki.client_cert("ores", "api"), pki.client_key("ores", "api")),
                timeout=10)
            from gateway.demo.simulators import CONTROL_HEADER
            mode = "up" if args.receiver_up else "down"
            conn.request("POST", "/_sim/receivers/ores/mode", body=json.dumps({"mode": mode}),
                         headers={CONTROL_HEADER: stack.control_token,
                                  "Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            conn.close()
            poller.start()
            time.sleep(1.0)
            results["idle_rss_mib"] = status_kib(proc.pid, "VmRSS") // MiB
            meters = ores_meters(stack)
            day = datetime.fromisoformat(stack.dataset.anchor) - timedelta(days=1)
            for n, form in enumerate(args.forms.split(",")):
                if form == "records":
                    body = records_body(meters, day, args.records_mb * MiB, f"MEM-R-{n}")
                else:
                    body = days_body(meters, day, args.meter_days_mb * MiB, f"MEM-D-{n}",
                                     repeat_registers=form == "meter-days-backlog")
                results[form] = push(port, hes, body, proc.pid, args.settle_s)
                del body
            results["peak_rss_mib_vmhwm"] = status_kib(proc.pid, "VmHWM") // MiB
        finally:
            poller.stop.set()
            if poller.is_alive():
                poller.join(15)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
            asyncio.run_coroutine_threadsafe(stack.stop(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        results["budget_mb"] = args.budget_mb
        results["fluvius_ok"] = poller.ok
        results["fluvius_failed"] = poller.failed
        results["cpus"] = os.cpu_count()
        print(json.dumps(results, indent=1))
        return 0 if not poller.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
