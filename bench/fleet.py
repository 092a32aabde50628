"""The fleet, measured (not part of the test suite; bench/README.md).

1. **Workers**: keep-alive throughput of ``gateway serve --workers 1`` and
   ``--workers 2`` on this machine, side by side, against the benchmark's
   static upstream (bench/upstream.py), state on a local PostgreSQL.
2. **Revocation propagation**: a control plane and two data-plane replicas
   (gateway.demo.Fleet); 50 certificates, each with an open keep-alive
   connection to every replica; each is revoked through the admin API and
   the time until every replica refuses it on that open connection is
   taken: p50, p99 and the maximum.
3. **Outbox delivery**: ``--batches`` HES batches (every single-owner
   electricity meter of the demo, ``--per-meter`` quarter-hours each) pushed
   through the first replica of a fleet of 1, then of 2 data-plane replicas,
   which claim the parts from the one PostgreSQL outbox; records per second
   from the first push to the last part delivered, side by side.

Everything on loopback; every loop is bounded in count and time.

    .venv/bin/python bench/fleet.py [--duration 8] [--revocations 50]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from run import (  # bench/run.py: the shared pieces of the benchmark
    PY,
    Server,
    StackThread,
    bench_tenants,
    children,
    device_block,
    free_port,
    log,
    spawn,
    toml_dump,
    wait_port_file,
    wait_ready,
)

from gateway.demo import Fleet, Stack, StackPorts
from gateway.demo._postgres import LocalCluster
from gateway.demo.simulators.hes import meter_rec
from gateway.pki import import_certificate
from gateway.state import PostgresStore
from gateway.tls import client_context

HOST = "127.0.0.1"


def phase_workers(args: argparse.Namespace, work: Path, cluster: LocalCluster) -> dict[str, Any]:
    tenants = bench_tenants(work / "tenants")
    state = cluster.database("bench_workers")  # the vault the gateway opens is there too
    stack = Stack(tenants_dir=tenants, certs_dir=work / "certs", work_dir=work / "stack",
                  run_gateway=False, ports=StackPorts(ops=free_port()), state_url=state)
    st = StackThread(stack)
    st.start()
    servers: list[Server] = []
    results: dict[str, Any] = {}
    try:
        pki = stack.pki
        meter = next(m for m in stack.dataset.meters if m["owners"][-1]["tenant"] == "ores"
                     and len(m["owners"]) == 1 and not m["airplane_mode"])
        bodies = {m["serial"]: {**meter_rec(m), **device_block(m, stack.dataset.anchor)}
                  for m in stack.dataset.meters}
        (work / "bodies.json").write_text(json.dumps(bodies))
        pf = work / "upstream.port"
        up = spawn("upstream", [PY, str(BENCH / "upstream.py"), "--bodies",
                                str(work / "bodies.json"), "--port-file", str(pf)],
                   None, work / "upstream.log")
        upstream = Server("upstream", up, wait_port_file(pf, up, "upstream"))
        servers.append(upstream)
        data_port, ops_port, _ = stack.gateway_ports
        for workers in (1, 2):
            doc = tomllib.loads(stack.config_path.read_text())
            doc["upstreams"]["hes"]["url"] = f"http://{HOST}:{upstream.port}"
            doc["state"] = {"url": state}
            doc["fleet"] = {"replica_id": f"bench-{workers}"}
            doc["gateway"]["data_dir"] = str(work / f"data-w{workers}")
            cfg = work / f"gateway-w{workers}.toml"
            cfg.write_text(toml_dump(doc))
            proc = spawn(f"gateway --workers {workers}", [
                str(Path(PY).parent / "gateway"), "serve", "--config", str(cfg), "--workers",
                str(workers)], None, work / f"gateway-w{workers}.log")
            gw = Server(f"workers-{workers}", proc, data_port)
            try:
                for i in range(workers):
                    wait_ready(ops_port + i, proc)
                pids = children(proc.pid) if workers > 1 else [proc.pid]
                runs = []
                for _ in range(args.rounds):
                    runs.append(loadgen(data_port, f"/hes/meters/{meter['serial']}", pki, pids,
                                        args.duration, args.connections))
                rps = statistics.median(r["rps"] for r in runs)
                results[f"workers_{workers}"] = {
                    "rps": rps, "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                    "server_cpu_us_per_req": statistics.median(
                        r.get("server_cpu_us_per_req") or 0 for r in runs),
                    "errors": sum(r["errors"] for r in runs)}
                log(f"--workers {workers}: {rps:.0f} req/s")
            finally:
                gw.stop()
        one, two = results["workers_1"]["rps"], results["workers_2"]["rps"]
        results["ratio_2_over_1"] = two / one if one else None
    finally:
        for s in servers:
            s.stop()
        st.stop()
    return results


def loadgen(port: int, path: str, pki: Any, pids: list[int], duration: float,
            connections: int) -> dict[str, Any]:
    argv = [PY, str(BENCH / "loadgen.py"), "--port", str(port), "--path", path,
            "--ca", str(pki.ca_cert), "--cert", str(pki.client_cert("ores", "api")),
            "--key", str(pki.client_key("ores", "api")), "--connections", str(connections),
            "--duration", str(duration), "--warmup", "1", "--cpu-pids",
            ",".join(map(str, pids))]
    proc = subprocess.run(argv, capture_output=True, timeout=duration + 120,
                          cwd=REPO, check=False)
    try:
        out: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise SystemExit(f"loadgen failed:\n{proc.stderr.decode()[-2000:]}") from None
    return out


# -- revocation propagation ------------------------------------------------------
class Conn:
    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=10)

    def status(self, path: str) -> int:
        try:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return 0


def phase_revocation(args: argparse.Namespace, work: Path, cluster: LocalCluster
                     ) -> dict[str, Any]:
    fleet = Fleet(tenants_dir=REPO / "tenants", certs_dir=work / "certs-fleet",
                  work_dir=work / "fleet", replicas=2, postgres_url=cluster.database("bench_rev"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(300)

    run(fleet.start())
    try:
        assert fleet.stack is not None
        pki = fleet.stack.pki
        meter = next(m["serial"] for m in fleet.stack.dataset.meters
                     if m["owners"][-1]["tenant"] == "ores" and not m["airplane_mode"])
        path = f"/hes/meters/{meter}"
        admin_ctx = client_context(pki.ca_cert, pki.client_cert("ores", "alice"),
                                   pki.client_key("ores", "alice"))
        store = PostgresStore(fleet.dsn)
        uri = "spiffe://shared-grid.test/tenant/ores/service/api"
        tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
        delays: list[float] = []
        try:
            for i in range(args.revocations):
                issued = pki.authority().issue_client(uri)
                cert, key = tmp / f"{i}.pem", tmp / f"{i}.key"
                cert.write_bytes(issued.cert_pem())
                key.write_bytes(issued.key_pem())
                import_certificate(store, issued.cert_pem(), ("ores", "service", "api"),
                                   datetime.now(UTC))
                ctx = client_context(pki.ca_cert, cert, key)
                conns = [Conn(r.data_port or 0, ctx) for r in fleet.data]
                assert all(c.status(path) == 200 for c in conns), "not served before"
                serial = f"{issued.certificate.serial_number:X}"
                admin = http.client.HTTPSConnection(HOST, fleet.control[0].admin_port or 0,
                                                    context=admin_ctx, timeout=10)
                t0 = time.perf_counter()
                admin.request("POST", f"/admin/certs/{serial}/revoke",
                              body=json.dumps({"reason": "bench", "code": "superseded"}),
                              headers={"Content-Type": "application/json"})
                assert admin.getresponse().status == 200
                admin.close()
                pending = set(range(len(conns)))
                deadline = t0 + 10  # bounded: a revocation not seen in 10 s is a failure
                while pending and time.perf_counter() < deadline:
                    for j in list(pending):
                        if conns[j].status(path) == 403:
                            pending.discard(j)
                if pending:
                    raise SystemExit(f"revocation {i} not refused within 10 s")
                delays.append(time.perf_counter() - t0)
                for c in conns:
                    c.conn.close()
        finally:
            store.close()
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        run(fleet.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    delays.sort()
    q = statistics.quantiles(delays, n=100, method="inclusive")
    return {"revocations": len(delays), "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "max_ms": delays[-1] * 1000}


# -- outbox delivery ---------------------------------------------------------------
def readings_batch(dataset: Any, batch_id: str, per_meter: int) -> tuple[dict[str, Any], int]:
    """A HES batch: ``per_meter`` quarter-hours of every meter with one owner and
    a plain electricity register (the routing keeps each for its owner)."""
    anchor = datetime.fromisoformat(dataset.anchor)
    records = []
    for m in dataset.meters:
        if m["airplane_mode"] or len(m["owners"]) != 1 or m["utility"] != "electricity" \
                or m["paired_with"]:
            continue
        for q in range(per_meter):
            at = anchor - timedelta(days=1) + timedelta(minutes=15 * q)
            records.append({"meter": m["serial"], "timestamp": at.isoformat(),
                            "obis": "1-0:1.8.1", "value": 12.5, "unit": "kWh",
                            "quality": "01"})
    return {"batch_id": batch_id, "records": records}, len(records)


def phase_outbox(args: argparse.Namespace, work: Path, cluster: LocalCluster
                 ) -> dict[str, Any]:
    """Push batches through the first replica; time until every part is
    delivered by the fleet's replicas, which compete for the parts."""
    out: dict[str, Any] = {}
    for replicas in (1, 2):
        dsn = cluster.database(f"bench_outbox_{replicas}")
        fleet = Fleet(tenants_dir=REPO / "tenants", certs_dir=work / "certs-fleet",
                      work_dir=work / f"outbox-{replicas}", replicas=replicas,
                      postgres_url=dsn)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        def run(coro: Any, loop: asyncio.AbstractEventLoop = loop) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(300)

        run(fleet.start())
        try:
            assert fleet.stack is not None
            pki = fleet.stack.pki
            ctx = client_context(pki.ca_cert, pki.client_cert("hes-operator", "pusher"),
                                 pki.client_key("hes-operator", "pusher"))
            total = 0
            t0 = time.perf_counter()
            for b in range(args.batches):
                batch, count = readings_batch(fleet.stack.dataset, f"BENCH-{b:04d}",
                                              args.per_meter)
                conn = http.client.HTTPSConnection(HOST, fleet.data[0].data_port or 0,
                                                   context=ctx, timeout=60)
                conn.request("POST", "/push/hes/batches", body=json.dumps(batch),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status != 202:
                    raise SystemExit(f"push answered {resp.status}")
                total += count
            t_pushed = time.perf_counter()
            deadline = t0 + 300  # bounded
            with psycopg.connect(dsn) as db:
                while time.perf_counter() < deadline:
                    row = db.execute("SELECT count(*) FILTER (WHERE status <> 'delivered'), "
                                     "count(*) FROM outbox_parts").fetchone()
                    if row is not None and row[0] == 0:
                        break
                    time.sleep(0.05)
                else:
                    raise SystemExit("outbox not delivered within 300 s")
                parts = row[1] if row else 0
            took = time.perf_counter() - t0
            out[f"replicas_{replicas}"] = {
                "parts": parts, "records": total, "seconds": took,
                "push_seconds": t_pushed - t0, "records_per_s": total / took}
            log(f"outbox, {replicas} replica(s): {parts} parts, {total} records in "
                f"{took:.1f} s ({total / took:.0f} records/s)")
        finally:
            run(fleet.stop())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
    one = out["replicas_1"]["records_per_s"]
    out["ratio_2_over_1"] = out["replicas_2"]["records_per_s"] / one if one else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(REPO / "var" / "bench-fleet"))
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--revocations", type=int, default=50)
    ap.add_argument("--batches", type=int, default=20, help="pushed batches (outbox phase)")
    ap.add_argument("--per-meter", type=int, default=96,
                    help="quarter-hours per meter in each batch")
    ap.add_argument("--only", default="workers,revocation,outbox")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work.chmod(0o711)  # the PostgreSQL cluster runs as its own user under root
    cluster = LocalCluster(work / "pg", durable=False).start()
    results: dict[str, Any] = {}
    try:
        if "workers" in args.only:
            results["workers"] = phase_workers(args, work, cluster)
        if "revocation" in args.only:
            results["revocation"] = phase_revocation(args, work, cluster)
        if "outbox" in args.only:
            results["outbox"] = phase_outbox(args, work, cluster)
    finally:
        cluster.stop()
    lines = ["| measure | value |", "| --- | --- |"]
    if "workers" in results:
        w = results["workers"]
        lines += [f"| keep-alive req/s, --workers 1 | {w['workers_1']['rps']:.0f} |",
                  f"| keep-alive req/s, --workers 2 | {w['workers_2']['rps']:.0f} |",
                  f"| ratio 2 / 1 | {w['ratio_2_over_1']:.2f} |"]
    if "revocation" in results:
        r = results["revocation"]
        lines += [f"| revocation to refusal on every replica, p50 (n={r['revocations']}) "
                  f"| {r['p50_ms']:.0f} ms |", f"| ... p99 | {r['p99_ms']:.0f} ms |",
                  f"| ... max | {r['max_ms']:.0f} ms |"]
    if "outbox" in results:
        o = results["outbox"]
        lines += [f"| outbox delivery, 1 replica | {o['replicas_1']['records_per_s']:.0f} "
                  "records/s |",
                  f"| outbox delivery, 2 replicas | {o['replicas_2']['records_per_s']:.0f} "
                  "records/s |",
                  f"| ratio 2 / 1 | {o['ratio_2_over_1']:.2f} |"]
    text = "\n".join(lines)
    (work / "latest.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
