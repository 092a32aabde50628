"""The benchmark: the gateway side by side with nginx, a naive aiohttp
proxy and the bare upstream, in one run, on loopback only.

Run it through ``bench/run.sh`` (or ``make bench``), which installs nginx and
the Python extras first; ``bench/README.md`` explains every number.

What runs, each in its own process:

* the Stack (dev PKI, dataset, the four simulators, receivers) in this
  process's background thread, with ``run_gateway=False``: it writes
  ``gateway.toml``, which is edited (HES upstream, relation feed, push
  endpoints) and served by ``gateway serve --config`` in its own process;
* ``bench/upstream.py``: the static HES stand-in (plain HTTP, ~1 KB meter
  record that passes the gateway's response check for ORES);
* nginx (1 worker) and ``bench/naive_proxy.py`` with the same server
  certificate, trust bundle (and CRL, for nginx) as the gateway;
* ``bench/sink.py``: the tenants' push receivers (counts, discards);
* ``bench/loadgen.py``: the load, in its own process(es).

With two or more cores the server under test gets core 0 and everything
else (load generator, upstream, this process) the other cores; for
"direct" the upstream itself is the server under test and moves to core 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import http.client
import json
import os
import platform
import re
import shutil
import signal
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PY = sys.executable
sys.path.insert(0, str(REPO))

from gateway.demo._stack import Stack
from gateway.demo.simulators.hes import meter_rec

HOST = "127.0.0.1"
TARGETS = {  # the performance bar, as ratios measured in the same run, per CPU-µs
    "cpu_vs_naive": 1.2, "cpu_vs_nginx": 0.20, "handshake_cpu_vs_nginx": 0.9,
    "p99_added_ms": 2.0, "idle_kib_per_conn": 48.0,
    "push_meter_days_per_core_s": {"meter-days": 120_000, "records": 4_400},
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------
def cpus() -> tuple[str, str] | None:
    """(server cpu list, client cpu list) for taskset, or None: no pinning."""
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) < 2:
        return None
    return str(avail[0]), ",".join(str(c) for c in avail[1:])


def task_ids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def pin(pid: int, cpu_list: str | None) -> None:
    """Move every thread of ``pid`` to ``cpu_list``."""
    if cpu_list is None:
        return
    mask = {int(c) for c in cpu_list.split(",")}
    for tid in task_ids(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, mask)


def children(pid: int) -> list[int]:
    out = []
    for tid in task_ids(pid):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as fh:
            out += [int(x) for x in fh.read().split()]
    return out


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_cpu_s(pid: int) -> float:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    f = raw[raw.rfind(b")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int = 0
    tree: bool = False  # nginx: master + workers

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.tree else [self.proc.pid]

    def cpu(self) -> float:
        return sum(proc_cpu_s(p) for p in self.pids())

    def rss(self) -> int:
        return sum(rss_bytes(p) for p in self.pids())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.name != "nginx" else signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def spawn(name: str, argv: list[str], cpu_list: str | None, logfile: Path,
          **kw: Any) -> subprocess.Popen[bytes]:
    prefix = ["taskset", "-c", cpu_list] if cpu_list else []
    fh = logfile.open("ab")
    log(f"start {name}: {' '.join(argv[:3])} ...")
    return subprocess.Popen([*prefix, *argv], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True, **kw)


def wait_port_file(path: Path, proc: subprocess.Popen[bytes], what: str,
                   timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening")
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start within {timeout} s")


# -- the Stack in a background event loop ----------------------------------
class StackThread:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stack", daemon=True)

    def run(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self.stack.start())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.stack.stop(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# -- configuration files -----------------------------------------------------
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_dump(doc: dict[str, Any]) -> str:
    """Enough TOML for gateway.toml: nested tables of strings, numbers, booleans."""
    lines: list[str] = []

    def key(k: str) -> str:
        return k if _BARE.fullmatch(k) else json.dumps(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def table(prefix: str, t: dict[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in t.items() if isinstance(v, dict)}
        if prefix and (scalars or not subs):
            lines.append(f"[{prefix}]")
            lines.extend(f"{key(k)} = {value(v)}" for k, v in scalars.items())
            lines.append("")
        for k, v in subs.items():
            table(f"{prefix}.{key(k)}" if prefix else key(k), v)

    table("", doc)
    return "\n".join(lines)


def device_block(meter: dict[str, Any], anchor: str) -> dict[str, Any]:
    """What an HES also tells about a device, to bring the record to ~1 KB."""
    day = anchor[:10]
    return {
        "firmware": {"core": "T211-4.2.1", "module": "PLC-G3 2.0.7",
                     "updated": f"{day}T02:10:00+00:00"},
        "communication": {"channel": "PLC G3", "last_contact": f"{day}T06:45:12+00:00",
                          "signal_dbm": -71, "hops": 2, "concentrator": "DC-5000-0042"},
        "registers": [
            {"obis": "1-0:1.8.1", "description": "Active energy import, tariff 1 (day)",
             "unit": "kWh", "scaler": -3},
            {"obis": "1-0:1.8.2", "description": "Active energy import, tariff 2 (night)",
             "unit": "kWh", "scaler": -3},
            {"obis": "1-0:2.8.1", "description": "Active energy export, tariff 1 (day)",
             "unit": "kWh", "scaler": -3},
            {"obis": "1-0:2.8.2", "description": "Active energy export, tariff 2 (night)",
             "unit": "kWh", "scaler": -3},
            {"obis": "1-0:1.29.0", "description": "Load profile, 15 min", "unit": "kWh",
             "scaler": -3}],
        "installed": "2021-03-15", "relay": "connected", "breaker_a": 40,
    }


HES_KINDS_OBIS = {"water": ("8-0:1.0.0", "m3")}
DEFAULT_OBIS = ("1-0:1.8.1", "kWh")


BENCH_QUOTA = """
# Added by bench/run.py: the quota check stays on, at a level the benchmark's
# 64 connections never reach (the default, 500 req/s and half of the HES
# pool, would make it a benchmark of the rate limiter).
[quota]
rate_per_s = 10000000
burst = 10000000
concurrency = 100000
upstream_share = 1.0
"""


def bench_tenants(out: Path) -> Path:
    """A copy of tenants/ where ORES (the load's tenant) has a quota above the load."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(REPO / "tenants", out)
    ores = out / "ores.toml"
    text = ores.read_text()
    if re.search(r"^\[quota\]", text, re.M):
        raise SystemExit("tenants/ores.toml has its own [quota]: adapt bench_tenants()")
    ores.write_text(text.rstrip("\n") + "\n" + BENCH_QUOTA)
    return out


def synthetic_serial(i: int) -> str:
    return f"BM{i:012d}"


def write_relations(base: Path, out: Path, meters: int, tenants: list[str]) -> None:
    """The Stack's relation feed plus ``meters`` synthetic meters, owned round-robin
    by the HES consortium's tenants (open validity)."""
    doc = json.loads(base.read_text())
    rels = doc["relations"]
    for i in range(meters):
        rels.append({"kind": "meter", "id": synthetic_serial(i),
                     "tenant": tenants[i % len(tenants)], "relation": "owner",
                     "valid_from": None, "valid_to": None})
    out.write_text(json.dumps(doc))


# -- running the load generator ---------------------------------------------
@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    pins: tuple[str, str] | None
    results: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    ca: str = ""
    client_cert: tuple[str, str] = ("", "")
    serial: str = ""
    sink_client: tuple[str, str] = ("", "")

    @property
    def server_cpus(self) -> str | None:
        return self.pins[0] if self.pins else None

    @property
    def client_cpus(self) -> str | None:
        return self.pins[1] if self.pins else None

    def target(self, name: str) -> tuple[int, list[str]]:
        """(port, loadgen args) for a target."""
        if name == "direct":
            return self.servers["upstream"].port, ["--plain", "--path", f"/meters/{self.serial}"]
        return self.servers[name].port, [
            "--path", f"/hes/meters/{self.serial}", "--ca", self.ca,
            "--cert", self.client_cert[0], "--key", self.client_cert[1]]

    def meter_server(self, name: str) -> Server:
        return self.servers["upstream" if name == "direct" else name]

    def loadgen(self, name: str, *extra: str, duration: float, warmup: float = 1.0,
                connections: int = 64) -> dict[str, Any]:
        upstream = self.servers["upstream"]
        pin(upstream.proc.pid, self.server_cpus if name == "direct" else self.client_cpus)
        port, target_args = self.target(name)
        server = self.meter_server(name)
        argv = [PY, str(BENCH / "loadgen.py"), "--port", str(port), *target_args,
                "--connections", str(connections), "--duration", str(duration),
                "--warmup", str(warmup), "--cpu-pids", ",".join(map(str, server.pids())),
                *extra]
        if self.args.no_uvloop:
            argv.append("--no-uvloop")
        prefix = ["taskset", "-c", self.client_cpus] if self.client_cpus else []
        proc = subprocess.run(prefix + argv, capture_output=True, timeout=duration + warmup + 120,
                              cwd=REPO)
        try:
            out: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise SystemExit(f"loadgen against {name} failed:\n"
                             f"{proc.stderr.decode()[-2000:]}") from None
        if out.get("errors"):
            log(f"  {name}: {out['errors']} errors, statuses {out['statuses']} {out['notes']}")
        return out


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


# -- phases --------------------------------------------------------------------
def phase_keepalive(b: Bench) -> None:
    names = ["direct", "nginx", "naive", "floor", "gateway"]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(b.args.rounds):
        for name in names:  # interleaved rounds: drift hits every target alike
            res = b.loadgen(name, duration=b.args.duration)
            runs[name].append(res)
            log(f"keep-alive round {r + 1}/{b.args.rounds} {name:8s} {res['rps']:9.0f} req/s "
                f"p99 {res['p99_ms']:.2f} ms  server {res.get('server_cpu_us_per_req')} µs/req "
                f"({res.get('server_cores')} cores)  loadgen "
                f"{res['loadgen_cpu_us_per_req']} µs/req")
    summary = {}
    for name, rs in runs.items():
        summary[name] = {k: median_of(rs, k) for k in (
            "rps", "p50_ms", "p99_ms", "server_cpu_us_per_req", "server_cores",
            "loadgen_cpu_us_per_req")}
        summary[name]["errors"] = sum(r["errors"] for r in rs)
    b.results["keepalive"] = {"summary": summary, "runs": runs}


def phase_half_load(b: Bench) -> None:
    gw = b.results["keepalive"]["summary"]["gateway"]["rps"]
    rate = max(1.0, gw / 2)
    names = ("direct", "nginx", "naive", "floor", "gateway")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(b.args.half_rounds):
        for name in names:
            # Each answer's send time and latency (bench/loadgen.py --timeline), kept in
            # the run directory: a stall (many slow answers at once) tells from a queue.
            timeline = b.work / f"timeline-half-{name}-{r + 1}.jsonl"
            res = b.loadgen(name, "--rate", f"{rate:.1f}", "--timeline", str(timeline),
                            duration=b.args.duration)
            runs[name].append(res)
            slow = res.get("slow_episodes") or {}
            log(f"half load ({rate:.0f}/s) round {r + 1} {name:8s} achieved {res['rps']:.0f}/s "
                f"p50 {res['p50_ms']:.2f} p99 {res['p99_ms']:.2f} ms; the answers over p99 in "
                f"{slow.get('episodes')} episodes")
    out: dict[str, Any] = {"rate": rate, "runs": runs}
    for name in names:
        out[name] = {k: median_of(runs[name], k) for k in ("rps", "p50_ms", "p90_ms", "p99_ms",
                                                            "server_cores",
                                                            "server_cpu_us_per_req")}
    out["p99_added_ms"] = out["gateway"]["p99_ms"] - out["direct"]["p99_ms"]
    out["p50_added_ms"] = out["gateway"]["p50_ms"] - out["direct"]["p50_ms"]
    b.results["half_load"] = out


OWN_HALF = ("nginx", "naive", "floor", "gateway")


def own_half_rates(keepalive: dict[str, Any]) -> dict[str, float]:
    """Half of each server's own maximum: the rate that keeps half a core busy
    at its full-load CPU per request. Not half its full-load req/s: a server
    cheaper than the load generator (nginx, the floor) is not saturated there."""
    out = {}
    for name in OWN_HALF:
        us = (keepalive.get(name) or {}).get("server_cpu_us_per_req")
        if us:
            out[name] = 0.5e6 / us
    return out


def phase_own_half(b: Bench) -> None:
    """Each server paced at half of its *own* maximum, and direct at the same
    rate: whether a 2 ms p99 at half load is within reach on this machine for
    a server without any of the gateway's code (the floor) or in C (nginx)."""
    rates = own_half_rates(b.results["keepalive"]["summary"])
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in rates}
    direct: dict[str, list[dict[str, Any]]] = {n: [] for n in rates}
    for r in range(b.args.half_rounds):
        for name, rate in rates.items():
            res = b.loadgen(name, "--rate", f"{rate:.1f}", duration=b.args.duration)
            ref = b.loadgen("direct", "--rate", f"{rate:.1f}", duration=b.args.duration)
            runs[name].append(res)
            direct[name].append(ref)
            log(f"own half load round {r + 1} {name:8s} asked {rate:.0f}/s achieved "
                f"{res['rps']:.0f}/s p99 {res['p99_ms']:.2f} ms at {res.get('server_cores')} "
                f"cores (direct at that rate: p99 {ref['p99_ms']:.2f} ms)")
    out: dict[str, Any] = {}
    for name, rate in rates.items():
        row: dict[str, Any] = {k: median_of(runs[name], k)
                               for k in ("rps", "p50_ms", "p99_ms", "server_cores",
                                         "server_cpu_us_per_req")}
        row["rate"] = rate
        row["direct_p99_ms"] = median_of(direct[name], "p99_ms")
        row["p99_added_ms"] = (row["p99_ms"] - row["direct_p99_ms"]
                               if row["p99_ms"] is not None and row["direct_p99_ms"] is not None
                               else None)
        out[name] = row
    b.results["own_half"] = {"servers": out, "runs": runs, "direct_runs": direct}


def phase_handshake(b: Bench) -> None:
    names = ["nginx", "naive", "floor", "gateway"]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(b.args.handshake_rounds):
        for name in names:
            res = b.loadgen(name, "--mode", "handshake", "--processes", "2",
                            duration=b.args.handshake_duration,
                            connections=b.args.handshake_connections)
            runs[name].append(res)
            log(f"handshake round {r + 1} {name:8s} {res['rps']:7.0f} conn/s p99 "
                f"{res['p99_ms']:.1f} ms server {res.get('server_cpu_us_per_req')} µs/conn "
                f"({res.get('server_cores')} cores) loadgen "
                f"{res['loadgen_cpu_us_per_req']} µs/conn")
    b.results["handshake"] = {
        "summary": {n: {k: median_of(rs, k) for k in ("rps", "p50_ms", "p99_ms",
                                                      "server_cpu_us_per_req", "server_cores",
                                                      "loadgen_cpu_us_per_req")}
                    for n, rs in runs.items()},
        "runs": runs}


def phase_memory(b: Bench, names: tuple[str, ...] = ("nginx", "naive", "gateway")) -> None:
    n = b.args.hold
    out: dict[str, Any] = {"connections": n}
    for name in names:
        server = b.servers[name]
        port, target_args = b.target(name)
        time.sleep(0.5)
        before = server.rss()
        argv = [PY, str(BENCH / "loadgen.py"), "--port", str(port), *target_args,
                "--mode", "hold", "--hold", str(n), "--hold-s", "60"]
        prefix = ["taskset", "-c", b.client_cpus] if b.client_cpus else []
        proc = subprocess.Popen(prefix + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, cwd=REPO)
        assert proc.stdout is not None and proc.stdin is not None
        ready: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            doc = json.loads(line)
            if doc.get("event") == "ready":
                ready = doc
                break
        time.sleep(1.0)
        after = server.rss()
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        opened = ready.get("open", 0)
        per = (after - before) / opened if opened else None
        out[name] = {"rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
                     "open": opened, "answered": ready.get("answered"),
                     "open_s": ready.get("open_s"), "bytes_per_conn": per}
        log(f"memory {name:8s}: {opened} idle mTLS connections, RSS {before / 2**20:.1f} -> "
            f"{after / 2**20:.1f} MiB = {per / 1024 if per else float('nan'):.1f} KiB/conn")
    b.results["memory"] = out


DEFAULT_WHATIF = "none;sslbuf;gc;uvloop;sslbuf,gc,uvloop"


def phase_whatif(b: Bench, variants: str, cfg: Path, ops_port: int) -> None:
    """Restart the gateway under bench/whatif.py with runtime patches and measure
    each variant the same way (keep-alive, new connections, idle-connection
    memory), in interleaved rounds; medians."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants.split(";")}
    for r in range(b.args.whatif_rounds):
        for variant in runs:
            patches = "" if variant == "none" else variant
            b.servers["gateway"].stop()
            p = spawn(f"gateway ({variant})", [PY, str(BENCH / "whatif.py"), "--patches",
                                               patches, "serve", "--config", str(cfg)],
                      b.server_cpus, b.work / "gateway-whatif.log")
            b.servers["gateway"] = Server("gateway", p, b.servers["gateway"].port)
            wait_ready(ops_port, p)
            smoke(b)
            ka = b.loadgen("gateway", duration=b.args.duration)
            hs = b.loadgen("gateway", "--mode", "handshake", "--processes", "2",
                           duration=b.args.handshake_duration,
                           connections=b.args.handshake_connections)
            saved = b.results.pop("memory", None)
            phase_memory(b, names=("gateway",))
            mem = b.results.pop("memory")["gateway"]
            if saved is not None:
                b.results["memory"] = saved
            runs[variant].append({"keepalive": ka, "handshake": hs, "memory": mem})
            log(f"what-if round {r + 1} {variant:36s} {ka['rps']:7.0f} req/s "
                f"{ka['server_cpu_us_per_req']} µs/req p99 {ka['p99_ms']:.1f} ms | "
                f"{hs['rps']:.0f} conn/s {hs['server_cpu_us_per_req']} µs/conn | "
                f"{(mem['bytes_per_conn'] or 0) / 1024:.1f} KiB/conn")
    out: dict[str, Any] = {}
    for variant, rs in runs.items():
        out[variant] = {
            "keepalive": {k: median_of([x["keepalive"] for x in rs], k)
                          for k in ("rps", "server_cpu_us_per_req", "p50_ms", "p99_ms")},
            "handshake": {k: median_of([x["handshake"] for x in rs], k)
                          for k in ("rps", "server_cpu_us_per_req")},
            "memory": {"bytes_per_conn": median_of([x["memory"] for x in rs],
                                                   "bytes_per_conn")},
            "runs": rs}
    b.results["whatif"] = out


def phase_profile(b: Bench) -> None:
    """py-spy on the gateway, Python and native frames, under the keep-alive load
    and under the new-connection load. py-spy pauses the process for each
    sample (--native needs it; --nonblocking sampling drops deep stacks more
    often than shallow ones, which skews the split), so the gateway serves
    less while it is recorded; the proportions are what counts."""
    spy = py_spy()
    if spy is None:
        return
    gw = b.servers["gateway"]
    raw = b.work / "profile.txt"
    with spying(spy, gw.proc.pid, raw, b, rate=100, native=True):
        res = b.loadgen("gateway", duration=b.args.profile_duration, warmup=0.5)
    raw_hs = b.work / "profile-handshake.txt"
    with spying(spy, gw.proc.pid, raw_hs, b, rate=100, native=True):
        hs = b.loadgen("gateway", "--mode", "handshake", "--processes", "2",
                       duration=min(5.0, b.args.profile_duration), warmup=0.5,
                       connections=b.args.handshake_connections)
    if not raw.exists():
        log("py-spy wrote no profile (see py-spy.log)")
        return
    b.results["profile"] = {"under_load": {"rps": res["rps"], "p99_ms": res["p99_ms"],
                                           "server_cpu_us_per_req":
                                               res.get("server_cpu_us_per_req")},
                            **analyse_profile(raw)}
    if raw_hs.exists():
        b.results["profile"]["handshake"] = {"under_load": {"rps": hs["rps"]},
                                             **analyse_profile(raw_hs)}
    log(f"profile: {b.results['profile']['samples']} samples in {raw}")


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)``; native frames as they are."""
    m = re.match(r"(.*) \((.*?):\d+\)$", frame.strip())
    if not m:
        return frame.strip()
    func, path = m.groups()
    short = path
    for marker in ("/site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            short = path.split(marker, 1)[1]
            break
    return f"{func} ({short})"


# A sample is *waiting*, not running, when its stack is in one of these (native
# frames) or its innermost Python frame is one of those (Python-only profiles,
# where py-spy's own idle detection already dropped most waits).
WAIT_NATIVE = ("take_gil", "PyThread_acquire_lock", "pthread_cond_timedwait", "pthread_cond_wait",
               "sem_wait", "sem_timedwait", "sem_clockwait", "epoll_wait", "__futex", "futex_wait")
WAIT_PYTHON = ("_worker (concurrent/futures/thread.py)", "Condition.wait (threading.py)",
               "Thread._wait_for_tstate_lock (threading.py)", "Queue.get (queue.py)",
               "Event.wait (threading.py)", "EpollSelector.select (selectors.py)")


def blocked(frames: list[str]) -> bool:
    if any(f.startswith(WAIT_NATIVE) for f in frames):
        return True
    py = [f for f in frames if _is_python(f)]
    return bool(py) and py[-1].startswith(WAIT_PYTHON) and not _is_python(frames[-1])


MARKS = {  # % of samples with any of these on the stack (native profiles)
    "OpenSSL (libssl/libcrypto)": ("libssl.so", "libcrypto.so"),
    "TLS handshake (SSLObject.do_handshake)": ("SSLObject.do_handshake",),
    "garbage collector": ("gc_collect_main",),
    "send/recv/write system calls": ("send (libc", "recv (libc", "write (libc", "writev (libc",
                                     "sendmsg (libc", "read (libc"),
    "the request pipeline (DataPlane.handle)": ("DataPlane.handle (",),
    "upstream call (UpstreamPool.call)": ("UpstreamPool.call (",),
    "audit log (ChainedAuditLog.record)": ("ChainedAuditLog.record (",),
    "Prometheus metrics": ("prometheus_client/",),
}


def _is_python(frame: str) -> bool:
    return frame.endswith(".py)")


# The pipeline's steps live in DataPlane and in the stages it owns.
_STAGE_CLASSES = ("DataPlane.", "ResponseCheck.", "PushIntake.", "RequestTrace.")


def stage_of(frames: list[str]) -> str:
    """Where a sample is, in the gateway's terms: the outermost ``DataPlane``
    step below ``DataPlane.handle`` (the pipeline, ordered in proxy.py), else
    the layer around it."""
    for i, f in enumerate(frames):
        if f.startswith("DataPlane.handle ("):
            for g in frames[i + 1:]:  # the step, not the wrappers that run the steps
                if (g.startswith(_STAGE_CLASSES)
                        and not g.startswith("DataPlane._pipeline")):
                    return "pipeline: " + g.split(" ")[0]
            return "pipeline: DataPlane.handle/_pipeline (own code)"
    joined = ";".join(frames)
    if "epoll_wait" in frames[-1] or "select (" in frames[-1]:
        return "idle (waiting in epoll)"
    if "SSLObject.do_handshake" in joined:
        return "TLS handshake outside the pipeline"
    if "SSLObject." in joined:
        return "TLS record layer outside the pipeline (ssl.SSLObject)"
    if "gateway/audit/" in joined:
        return "audit log outside the pipeline (the group's write, checkpoints)"
    if "gateway/upstream/" in joined:
        return "upstream client outside the pipeline (reading the answer, the pool)"
    if "gateway/edge/" in joined:
        return "lean server outside the pipeline (head parse, answer, keep-alive)"
    py = [f for f in frames if _is_python(f)]
    if py and py[-1].startswith("Runner.run ("):
        return "the event loop's own C (uvloop: polling, sockets, callbacks)"
    if "sslproto.py" in joined:
        return "TLS record layer outside the pipeline (asyncio sslproto)"
    if "web_protocol.py" in joined or "http_parser" in joined or "_http_parser" in joined:
        return "aiohttp server outside the pipeline (parse, respond, keep-alive)"
    if "aiohttp/client" in joined or "client_proto" in joined or "connector.py" in joined:
        return "aiohttp client outside the pipeline (response parsing, pool)"
    return "other (event loop, timers, background tasks)"


def analyse_profile(raw: Path) -> dict[str, Any]:
    native_self: Counter[str] = Counter()
    py_self: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    stage: Counter[str] = Counter()
    marked: Counter[str] = Counter()
    total = idle_threads = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        if blocked(frames):
            idle_threads += n  # waiting (GIL, a lock, a queue, epoll): not CPU
            continue
        total += n
        native_self[frames[-1]] += n
        py = [f for f in frames if _is_python(f)]
        if py:
            py_self[py[-1]] += n
        for f in set(py):
            incl[f] += n
        stage[stage_of(frames)] += n
        joined = ";".join(frames)
        for label, needles in MARKS.items():
            if any(nd in joined for nd in needles):
                marked[label] += n
    idle = stage.get("idle (waiting in epoll)", 0)
    marks = {k: round(100 * v / max(total, 1), 1) for k, v in marked.items()}

    def top(c: Counter[str], k: int) -> list[dict[str, Any]]:
        return [{"function": f, "samples": n, "pct": round(100 * n / max(total, 1), 1)}
                for f, n in c.most_common(k)]

    skip = ("<module> (", "main (", "cmd_serve (", "_run_until_signal (", "run (asyncio",
            "Runner.run (", "BaseEventLoop.run", "BaseEventLoop._run_once (", "Handle._run (")
    return {"samples": total, "idle_samples": idle, "idle_thread_samples_dropped": idle_threads,
            "python_self_top": top(py_self, 15), "native_self_top": top(native_self, 15),
            "inclusive_top": top(Counter({f: n for f, n in incl.items()
                                          if not f.startswith(skip)}), 25),
            "stages_pct": {k: round(100 * v / max(total, 1), 1) for k, v in stage.most_common()},
            "marks_pct": marks}


# -- push ------------------------------------------------------------------------
def batch_bytes(start: int, count: int, tenants: list[str], kinds: dict[str, str],
                day: datetime, tag: str = "BENCH") -> bytes:
    stamps = [(day + timedelta(minutes=15 * (q + 1))).isoformat() for q in range(96)]
    recs = []
    for i in range(start, start + count):
        serial = synthetic_serial(i)
        obis, unit = HES_KINDS_OBIS.get(kinds[tenants[i % len(tenants)]], DEFAULT_OBIS)
        head = f'{{"meter":"{serial}","timestamp":"'
        tail = f'","obis":"{obis}","unit":"{unit}","quality":"01","value":'
        recs.extend(f"{head}{ts}{tail}{(i * 31 + q * 7) % 997 / 10}}}"
                    for q, ts in enumerate(stamps))
    return (f'{{"batch_id":"{tag}-{day:%Y%m%d}-{start:09d}","source":"hes","records":['
            + ",".join(recs) + "]}").encode()


def days_bytes(start: int, count: int, tenants: list[str], kinds: dict[str, str],
               day: datetime, tag: str = "BENCH") -> bytes:
    """The same readings as :func:`batch_bytes`, in the columnar format
    (``meter-days/v1``: one object per meter and day, 96 values)."""
    first = (day + timedelta(minutes=15)).isoformat()
    days = []
    for i in range(start, start + count):
        obis, unit = HES_KINDS_OBIS.get(kinds[tenants[i % len(tenants)]], DEFAULT_OBIS)
        values = ",".join(str((i * 31 + q * 7) % 997 / 10) for q in range(96))
        days.append(f'{{"meter":"{synthetic_serial(i)}","start":"{first}","interval":900,'
                    f'"obis":"{obis}","unit":"{unit}","quality":"{"01" * 96}",'
                    f'"values":[{values}]}}')
    return (f'{{"format":"meter-days/v1","batch_id":"{tag}-D-{day:%Y%m%d}-{start:09d}",'
            f'"source":"hes","meter_days":[' + ",".join(days) + "]}").encode()


def phase_push(b: Bench, stack: Stack, tenants: list[str], kinds: dict[str, str]) -> None:
    """Route and enqueue a synthetic day, then let the gateway deliver it.

    While the batches are posted the sink holds deliveries (at most 10 s each),
    so the intake figures are intake alone; then the sink lets go and the
    delivery of everything queued is timed on its own."""
    meters = b.args.meters
    columnar = b.args.push_format == "meter-days"
    make = days_bytes if columnar else batch_bytes
    per = min(b.args.batch_meters or (10_000 if columnar else 1000), meters)
    gw = b.servers["gateway"]
    pki = stack.pki
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.client_cert("hes-operator", "pusher")),
                        str(pki.client_key("hes-operator", "pusher")))
    day = datetime.fromisoformat(stack.dataset.anchor) - timedelta(days=1)
    starts = list(range(0, meters, per))
    conn = http.client.HTTPSConnection(HOST, gw.port, context=ctx, timeout=600)
    totals: Counter[str] = Counter()
    latencies = []
    pool = ThreadPoolExecutor(1)
    nxt = pool.submit(make, starts[0], min(per, meters - starts[0]), tenants, kinds, day)
    sink_before = sink_call(b, "GET", "/_count")
    sink_call(b, "POST", "/_hold", {"hold": True})
    deadline = time.monotonic() + b.args.push_timeout
    sent = 0
    try:
        t0 = time.perf_counter()
        c0 = gw.cpu()
        for k, start in enumerate(starts):
            body = nxt.result()
            if k + 1 < len(starts):  # generate the next batch while this one is routed
                s2 = starts[k + 1]
                nxt = pool.submit(make, s2, min(per, meters - s2), tenants, kinds, day)
            t = time.perf_counter()
            conn.request("POST", "/push/hes/batches", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            latencies.append(time.perf_counter() - t)
            if resp.status != 202:
                raise SystemExit(f"push batch {start}: {resp.status} {str(doc)[:300]}")
            for key in ("received", "queued", "quarantined", "refused"):
                totals[key] += doc[key]
            sent += min(per, meters - start)
            if time.monotonic() > deadline:
                log(f"push: time bound reached after {sent} meters")
                break
        wall = time.perf_counter() - t0
        cpu = gw.cpu() - c0
    finally:
        sink_call(b, "POST", "/_hold", {"hold": False})
        pool.shutdown(cancel_futures=True)
        conn.close()
    expected_parts = len(latencies) * len(tenants)
    t1 = time.perf_counter()
    c1 = gw.cpu()
    drain_deadline = time.monotonic() + b.args.push_timeout
    got = sink_before
    while time.monotonic() < drain_deadline:
        got = sink_call(b, "GET", "/_count")
        if got["parts"] - sink_before["parts"] >= expected_parts:
            break
        time.sleep(0.1)
    drain = time.perf_counter() - t1
    drain_cpu = gw.cpu() - c1
    delivered = got["records"] - sink_before["records"]
    out = {
        "format": b.args.push_format,
        "meters": sent, "records": totals["received"], "batches": len(latencies),
        "meters_per_batch": per, "totals": dict(totals),
        "intake_wall_s": wall, "intake_gateway_cpu_s": cpu,
        "meter_days_per_s": sent / wall, "meter_days_per_cpu_s": sent / cpu if cpu else None,
        "records_per_s": totals["received"] / wall,
        "batch_p50_s": statistics.median(latencies), "batch_max_s": max(latencies),
        "delivered_parts": got["parts"] - sink_before["parts"], "expected_parts": expected_parts,
        "delivered_records": delivered, "delivery_wall_s": drain,
        "delivery_gateway_cpu_s": drain_cpu,
        "delivered_meter_days_per_s": sent / drain if drain else None,
        "end_to_end_meter_days_per_cpu_s": sent / (cpu + drain_cpu) if cpu + drain_cpu else None,
        "redeliveries": got.get("duplicates", 0) - sink_before.get("duplicates", 0),
        "batch_s": [round(x, 4) for x in latencies],  # in order: does intake slow down?
        "first_tenth_batch_s": statistics.mean(latencies[:max(1, len(latencies) // 10)]),
        "last_tenth_batch_s": statistics.mean(latencies[-max(1, len(latencies) // 10):]),
        "gateway_rss_mb": gw.rss() / 2**20,
    }
    b.results["push"] = out
    log(f"push intake: {sent} meter-days ({totals['received']} records, "
        f"{totals['quarantined']} quarantined) in {wall:.1f} s = {out['meter_days_per_s']:.0f} "
        f"meter-days/s; gateway CPU {cpu:.1f} s = {out['meter_days_per_cpu_s'] or 0:.0f} "
        f"meter-days per CPU-second")
    log(f"push: a batch took {out['first_tenth_batch_s']:.2f} s on average in the first tenth "
        f"of the batches, {out['last_tenth_batch_s']:.2f} s in the last tenth")
    log(f"push delivery: {delivered} records in {out['delivered_parts']} parts in {drain:.1f} s "
        f"(gateway CPU {drain_cpu:.1f} s)")
    if "profile" in b.args.only.split(","):
        profile_push(b, ctx, tenants, kinds, day, per)


def profile_push(b: Bench, ctx: ssl.SSLContext, tenants: list[str], kinds: dict[str, str],
                 day: datetime, per: int) -> None:
    """py-spy on the gateway while it routes a few more batches (deliveries held),
    then while it delivers them: where intake and delivery spend their time."""
    spy = py_spy()
    if spy is None:
        return
    gw = b.servers["gateway"]
    n = max(1, min(3, b.args.meters // per))
    make = days_bytes if b.args.push_format == "meter-days" else batch_bytes
    bodies = [make(i * per, per, tenants, kinds, day, tag="BENCH-PROFILE") for i in range(n)]
    before = sink_call(b, "GET", "/_count")
    sink_call(b, "POST", "/_hold", {"hold": True})
    out = {}
    try:
        raw = b.work / "profile-push-intake.txt"
        with spying(spy, gw.proc.pid, raw, b):
            conn = http.client.HTTPSConnection(HOST, gw.port, context=ctx, timeout=600)
            for body in bodies:
                conn.request("POST", "/push/hes/batches", body=body,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
            conn.close()
        out["intake"] = analyse_profile(raw)
    finally:
        sink_call(b, "POST", "/_hold", {"hold": False})
    raw = b.work / "profile-push-delivery.txt"
    deadline = time.monotonic() + 120
    with spying(spy, gw.proc.pid, raw, b):
        while time.monotonic() < deadline:
            if sink_call(b, "GET", "/_count")["parts"] - before["parts"] >= n * len(tenants):
                break
            time.sleep(0.1)
    out["delivery"] = analyse_profile(raw)
    b.results["profile_push"] = out
    log(f"push profiles: {out['intake']['samples']} intake and {out['delivery']['samples']} "
        "delivery samples")


def py_spy() -> str | None:
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():
        log("py-spy not installed: profile skipped")
        return None
    return spy


@contextlib.contextmanager
def spying(spy: str, pid: int, raw: Path, b: Bench, rate: int = 100,
           native: bool = True) -> Iterator[None]:
    """py-spy record around a block; stopped with SIGINT, which makes it write
    the profile. Native frames need py-spy to pause the process per sample;
    Python-only recording does not (--nonblocking)."""
    prefix = ["taskset", "-c", b.client_cpus] if b.client_cpus else []
    mode = ["--native"] if native else ["--nonblocking"]
    proc = subprocess.Popen([*prefix, spy, "record", "--pid", str(pid), "--rate", str(rate),
                             "--format", "raw", "--output", str(raw), *mode],
                            stdout=subprocess.DEVNULL,
                            stderr=(b.work / "py-spy.log").open("ab"))
    time.sleep(0.5)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def sink_call(b: Bench, method: str, path: str, body: Any = None) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=b.ca)
    ctx.load_cert_chain(*b.sink_client)
    conn = http.client.HTTPSConnection(HOST, b.servers["sink"].port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
    finally:
        conn.close()


# -- report --------------------------------------------------------------------
def cpu_latency(us: int) -> Any:
    """A PM QoS request for at most ``us`` µs of wake-up latency, held while the
    returned file is open; None when not asked for or not permitted. In a VM an
    idle CPU that halts exits to the host, and its next wake-up pays for it
    (bench/README.md, "Half of each server's own maximum")."""
    if us < 0:
        return None
    try:
        f = open("/dev/cpu_dma_latency", "wb", buffering=0)  # noqa: SIM115 (held for the run)
        f.write(struct.pack("i", us))
    except OSError as e:
        log(f"cannot set the CPU latency to {us} µs ({e}); the machine's own idle policy")
        return None
    log(f"CPU wake-up latency held at {us} µs for this run (/dev/cpu_dma_latency)")
    return f


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    versions = {}
    for mod in ("aiohttp", "uvloop", "cryptography"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    git = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                       capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "gateway"], cwd=REPO,
                               capture_output=True, text=True).stdout.splitlines()
        git["gateway_files_changed"] = len(dirty)
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(),
            "git": git,
            "cpu_model": model, "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION, "nginx": nginx.replace("nginx version: ", ""),
            "kernel": platform.release(), **versions}


def fmt(v: Any, spec: str = ".0f") -> str:
    if v is None:
        return "–"
    return format(v, spec)


def report(b: Bench) -> str:
    r = b.results
    m = r["machine"]
    pinning = (f"server under test on core {b.pins[0]}, load generator + upstream on "
               f"{b.pins[1]}" if b.pins else "none")
    lines = [f"Date {m['date']}; {m['nproc']} × {m['cpu_model']}; Python {m['python']}, "
             f"{m['openssl']}, {m['nginx']}, aiohttp {m.get('aiohttp')}, "
             f"uvloop {m.get('uvloop', '–')}; gateway and naive proxy on "
             f"{r.get('event_loop', 'asyncio')}. "
             f"Gateway at commit {m.get('git', {}).get('commit', '?')} "
             f"({m.get('git', {}).get('gateway_files_changed', '?')} uncommitted files under "
             "gateway/). "
             f"Pinning: {pinning}. CPU wake-up latency: "
             + ("the machine's own idle policy" if m.get("cpu_latency_us") is None
                else f"held at {m['cpu_latency_us']} µs (--cpu-latency-us)") + ".",
             ""]
    ka = r.get("keepalive", {}).get("summary")
    hl = r.get("half_load")
    if ka:
        gw = ka["gateway"]
        lines += [
            f"Keep-alive, 64 connections, {b.args.duration:.0f} s × {b.args.rounds} interleaved "
            "rounds, medians; p50/p99 at full load; CPU per request = the server process(es)' "
            "utime+stime over the window / requests",
            "",
            "| configuration | req/s | p50 ms | p99 ms | server CPU µs/req | server cores used "
            "| loadgen CPU µs/req | gateway ÷ this (req/s) | gateway ÷ this (per CPU-µs) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        labels = {"direct": "direct to upstream (plain HTTP, static)",
                  "nginx": "nginx 1 worker, mTLS → upstream",
                  "naive": "naive aiohttp proxy, mTLS → upstream",
                  "floor": "floor: forward, nothing checked (bench/floor.py), mTLS → upstream",
                  "gateway": "gateway, every check on, mTLS → upstream"}
        for name in ("direct", "nginx", "naive", "floor", "gateway"):
            if name not in ka:  # results of a run before the floor was measured
                continue
            s = ka[name]
            ratio = gw["rps"] / s["rps"] if s["rps"] else None
            cpu_ratio = (s["server_cpu_us_per_req"] / gw["server_cpu_us_per_req"]
                         if s.get("server_cpu_us_per_req") and gw.get("server_cpu_us_per_req")
                         else None)
            lines.append(
                f"| {labels[name]} | {fmt(s['rps'])} | {fmt(s['p50_ms'], '.2f')} | "
                f"{fmt(s['p99_ms'], '.2f')} | {fmt(s['server_cpu_us_per_req'], '.1f')} | "
                f"{fmt(s['server_cores'], '.2f')} | {fmt(s['loadgen_cpu_us_per_req'], '.1f')} | "
                f"{'' if name == 'gateway' else fmt(ratio, '.3f')} | "
                f"{'' if name == 'gateway' else fmt(cpu_ratio, '.3f')} |")
        lines.append("")
    hs = r.get("handshake", {}).get("summary")
    if hs:
        lines += [f"New connection per request (full TLS 1.3 handshake with client certificate, "
                  f"no resumption), {b.args.handshake_connections} in flight, "
                  f"{b.args.handshake_duration:.0f} s × {b.args.handshake_rounds} rounds, medians",
                  "",
                  "| configuration | handshakes+requests/s | p50 ms | p99 ms | "
                  "server CPU µs/conn | server cores used | loadgen CPU µs/conn | "
                  "gateway ÷ this |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name in ("nginx", "naive", "floor", "gateway"):
            if name not in hs:
                continue
            s = hs[name]
            ratio = hs["gateway"]["rps"] / s["rps"] if s["rps"] else None
            lines.append(f"| {name} | {fmt(s['rps'])} | {fmt(s['p50_ms'], '.1f')} | "
                         f"{fmt(s['p99_ms'], '.1f')} | {fmt(s['server_cpu_us_per_req'], '.0f')} | "
                         f"{fmt(s['server_cores'], '.2f')} | "
                         f"{fmt(s['loadgen_cpu_us_per_req'], '.0f')} | "
                         f"{'' if name == 'gateway' else fmt(ratio, '.3f')} |")
        lines.append("")
    if hl:
        lines += [f"Paced at half the gateway's maximum ({hl['rate']:.0f} req/s in total, 64 "
                  f"connections), {b.args.duration:.0f} s × {b.args.half_rounds} interleaved "
                  "rounds, medians. Server cores used: paced, a request mostly arrives "
                  "alone and costs more CPU than at full load (no batching, a wake-up each), "
                  "so half the maximum rate is more than half a core (bench/README)", "",
                  "| configuration | achieved req/s | p50 ms | p99 ms | p99 added over direct ms "
                  "| server cores used | server CPU µs/req |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name in ("direct", "nginx", "naive", "floor", "gateway"):
            if name not in hl:
                continue
            s = hl[name]
            added = s["p99_ms"] - hl["direct"]["p99_ms"]
            lines.append(f"| {name} | {fmt(s['rps'])} | {fmt(s['p50_ms'], '.2f')} | "
                         f"{fmt(s['p99_ms'], '.2f')} | "
                         f"{'' if name == 'direct' else fmt(added, '.2f')} | "
                         f"{fmt(s.get('server_cores'), '.2f')} | "
                         f"{fmt(s.get('server_cpu_us_per_req'), '.0f')} |")
        lines += ["", "The answers slower than each run's p99, grouped into episodes (sent "
                  "under 20 ms apart; `--timeline` of bench/loadgen.py, files "
                  "`timeline-half-*.jsonl` in the run directory): many in few episodes is a "
                  "stall and the queue behind it, not a slow request", ""]
        for name in ("nginx", "floor", "gateway"):
            for k, run in enumerate(hl.get("runs", {}).get(name, [])):
                slow = run.get("slow_episodes")
                if not slow:
                    continue
                big = slow["largest"][0] if slow["largest"] else None
                lines.append(f"- {name}, round {k + 1}: {slow['slow']} answers over "
                             f"{slow['threshold_ms']:.2f} ms in {slow['episodes']} episodes"
                             + (f"; the largest {big['slow']} answers over {big['span_ms']} ms "
                                f"(the worst {big['worst_ms']} ms)" if big else ""))
        lines.append("")
    lines += own_half_lines(r, b.args)
    mem = r.get("memory")
    if mem:
        lines += [f"Idle mTLS keep-alive connections: {mem['connections']} opened (one request "
                  "each), RSS of the server process(es) before and after", "",
                  "| configuration | open | RSS before MiB | RSS after MiB | KiB per connection |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name in ("nginx", "naive", "gateway"):
            s = mem[name]
            per = s["bytes_per_conn"] / 1024 if s["bytes_per_conn"] else None
            lines.append(f"| {name} | {s['open']} | {s['rss_before_mb']:.1f} | "
                         f"{s['rss_after_mb']:.1f} | {fmt(per, '.1f')} |")
        lines.append("")
    push = r.get("push")
    if push:
        dcpu = push["delivery_gateway_cpu_s"]
        lines += [
            "Push (`POST /push/hes/batches` as hes-operator/service/pusher, format "
            f"`{push.get('format', 'records')}`; deliveries held "
            "at the sink during intake, then timed on their own)", "",
            "| phase | meter-days | records | wall s | gateway CPU s | meter-days/s | "
            "meter-days per CPU-s | records/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| route + enqueue ({push['batches']} batches × {push['meters_per_batch']} meters) | "
            f"{push['meters']} | {push['records']} | {push['intake_wall_s']:.1f} | "
            f"{push['intake_gateway_cpu_s']:.1f} | {push['meter_days_per_s']:.0f} | "
            f"{fmt(push['meter_days_per_cpu_s'])} | {push['records_per_s']:.0f} |",
            f"| delivery to the tenants' receivers ({push['delivered_parts']} parts) | "
            f"{push['meters']} | {push['delivered_records']} | {push['delivery_wall_s']:.1f} | "
            f"{push['delivery_gateway_cpu_s']:.1f} | {fmt(push['delivered_meter_days_per_s'])} | "
            f"{fmt(push['meters'] / dcpu if dcpu else None)} | "
            f"{push['delivered_records'] / push['delivery_wall_s']:.0f} |",
            f"| both | {push['meters']} | | | "
            f"{push['intake_gateway_cpu_s'] + push['delivery_gateway_cpu_s']:.1f} | | "
            f"{fmt(push['end_to_end_meter_days_per_cpu_s'])} | |", ""]
    lines += floor_lines(r)
    lines += ["Targets (ratios from this run)", "",
              "| target | bar | measured | met |", "| --- | ---: | ---: | :---: |"]
    for label, bar, val, higher in targets(r):
        ok = None if val is None else (val >= bar if higher else val <= bar)
        lines.append(f"| {label} | {'≥' if higher else '≤'} {bar:g} | {fmt(val, '.3g')} | "
                     f"{'–' if ok is None else ('yes' if ok else 'NO')} |")
    return "\n".join(lines)


def own_half_lines(r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The table of phase own-half: each server at half of its own maximum."""
    oh = (r.get("own_half") or {}).get("servers")
    ka = r.get("keepalive", {}).get("summary") or {}
    if not oh:
        return []
    lines = [f"Each server paced at half of its own maximum (the rate that keeps half a core "
             f"busy at its full-load CPU per request), and direct at the same rate, "
             f"{args.duration:.0f} s × {args.half_rounds} interleaved rounds, medians: the "
             "half-load bar applied to servers without the gateway's code. A paced request "
             "costs more than one at full load (paced ÷ full); a load generator that cannot "
             "keep the pace shows as achieved < asked", "",
             "| server | asked req/s | achieved req/s | server cores used | CPU µs/req paced "
             "| paced ÷ full | p99 ms | direct p99 ms | p99 added ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in OWN_HALF:
        s = oh.get(name)
        if not s:
            continue
        full = (ka.get(name) or {}).get("server_cpu_us_per_req")
        paced = s.get("server_cpu_us_per_req")
        lines.append(f"| {name} | {fmt(s['rate'])} | {fmt(s['rps'])} | "
                     f"{fmt(s.get('server_cores'), '.2f')} | {fmt(paced, '.0f')} | "
                     f"{fmt(paced / full if paced and full else None, '.2f')} | "
                     f"{fmt(s['p99_ms'], '.2f')} | {fmt(s['direct_p99_ms'], '.2f')} | "
                     f"{fmt(s['p99_added_ms'], '.2f')} |")
    return [*lines, ""]


def floor_lines(r: dict[str, Any]) -> list[str]:
    """What the floor says of the per-CPU bars: how near nginx a Python proxy
    on this event loop, TLS policy and upstream gets with no code of the
    gateway's at all, and what the gateway's own code costs above it."""
    out: list[str] = []
    for phase, what in (("keepalive", "request (keep-alive)"),
                        ("handshake", "new mTLS connection and its request")):
        summary = r.get(phase, {}).get("summary") or {}
        us = {n: (summary.get(n) or {}).get("server_cpu_us_per_req")
              for n in ("nginx", "floor", "gateway")}
        if not (us["nginx"] and us["floor"] and us["gateway"]):
            continue
        out.append(f"- Per {what}: the floor needs {us['floor']:.1f} µs of CPU, "
                   f"{us['nginx'] / us['floor']:.3f}× nginx's per CPU-µs; the gateway "
                   f"{us['gateway']:.1f} µs, so its own code costs "
                   f"{us['gateway'] - us['floor']:.1f} µs above the floor "
                   f"({(us['gateway'] - us['floor']) / us['gateway']:.0%} of its CPU).")
    hl = r.get("half_load") or {}
    if hl.get("floor") and hl.get("direct") and hl["floor"].get("p99_ms") is not None:
        floor, gw = hl["floor"], hl.get("gateway") or {}
        out.append(f"- At half the gateway's maximum ({hl['rate']:.0f} req/s): the floor's p99 "
                   f"is {floor['p99_ms'] - hl['direct']['p99_ms']:.2f} ms over direct at "
                   f"{fmt(floor.get('server_cores'), '.2f')} cores, the gateway's "
                   f"{hl['p99_added_ms']:.2f} ms at {fmt(gw.get('server_cores'), '.2f')} cores.")
    own = (r.get("own_half") or {}).get("servers") or {}
    if own.get("floor", {}).get("p99_added_ms") is not None:
        others = ", ".join(f"{n} {own[n]['p99_added_ms']:.2f} ms at "
                           f"{fmt(own[n].get('server_cores'), '.2f')} cores"
                           for n in ("nginx", "naive", "gateway")
                           if own.get(n, {}).get("p99_added_ms") is not None)
        out.append(f"- At half of its own maximum the floor's p99 is "
                   f"{own['floor']['p99_added_ms']:.2f} ms over direct at "
                   f"{fmt(own['floor'].get('server_cores'), '.2f')} cores ({others}).")
    if out:
        out = ["The floor (bench/floor.py: a Python proxy on the same event loop, TLS policy, "
               "certificate and CRL, that checks nothing): what CPython, the event loop and "
               "OpenSSL cost before any of the gateway's code runs.", "", *out, ""]
    return out


def targets(r: dict[str, Any]) -> list[tuple[str, float, float | None, bool]]:
    """Each bar against this run: per CPU-µs of the server process (the
    gateway's cost ÷ the reference's), the half-load p99, the idle
    connection's memory and the push rate of the format that ran (the
    per-record bar is twice the 2,200 per CPU-s measured before)."""
    out: list[tuple[str, float, float | None, bool]] = []

    def per_cpu(summary: dict[str, Any], other: str) -> float | None:
        mine = summary["gateway"].get("server_cpu_us_per_req")
        theirs = summary[other].get("server_cpu_us_per_req")
        return theirs / mine if mine and theirs else None

    ka = r.get("keepalive", {}).get("summary")
    if ka:
        out.append(("gateway ÷ naive, per CPU-µs (same event loop)", TARGETS["cpu_vs_naive"],
                    per_cpu(ka, "naive"), True))
        out.append(("gateway ÷ nginx, per CPU-µs", TARGETS["cpu_vs_nginx"],
                    per_cpu(ka, "nginx"), True))
    hs = r.get("handshake", {}).get("summary")
    if hs:
        out.append(("gateway ÷ nginx, new mTLS connections per CPU-µs",
                    TARGETS["handshake_cpu_vs_nginx"], per_cpu(hs, "nginx"), True))
    if r.get("half_load"):
        out.append(("p99 added over direct at half load, ms", TARGETS["p99_added_ms"],
                    r["half_load"]["p99_added_ms"], False))
    mem = r.get("memory", {}).get("gateway")
    if mem and mem.get("bytes_per_conn") is not None:
        out.append(("idle mTLS keep-alive connection, KiB", TARGETS["idle_kib_per_conn"],
                    mem["bytes_per_conn"] / 1024, False))
    if r.get("push"):
        fmt_name = r["push"].get("format", "records")
        out.append((f"push ({fmt_name}) meter-days per CPU-second",
                    TARGETS["push_meter_days_per_core_s"][fmt_name],
                    r["push"]["meter_days_per_cpu_s"], True))
    return out


def whatif_report(r: dict[str, Any]) -> str:
    w = r.get("whatif")
    if not w:
        return ""
    base = w.get("none", {}).get("keepalive", {})
    lines = ["What-if: the gateway restarted under bench/whatif.py with runtime patches "
             "(same loads as above, interleaved rounds, medians)", "",
             "| patches | req/s | server CPU µs/req | vs none | p99 ms | new conn/s | "
             "server CPU µs/conn | KiB per idle conn |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, v in w.items():
        ka, hs, mem = v["keepalive"], v["handshake"], v["memory"]
        speed = (base["server_cpu_us_per_req"] / ka["server_cpu_us_per_req"]
                 if base.get("server_cpu_us_per_req") and ka.get("server_cpu_us_per_req")
                 else None)
        lines.append(f"| {name} | {fmt(ka['rps'])} | {fmt(ka['server_cpu_us_per_req'], '.1f')} | "
                     f"{fmt(speed, '.2f')}× | {fmt(ka['p99_ms'], '.1f')} | {fmt(hs['rps'])} | "
                     f"{fmt(hs['server_cpu_us_per_req'], '.0f')} | "
                     f"{fmt((mem['bytes_per_conn'] or 0) / 1024, '.1f')} |")
    return "\n".join(lines) + "\n"


def profile_report(r: dict[str, Any]) -> str:
    p = r.get("profile")
    if not p:
        return ""
    lines = [f"py-spy (--native, 100 Hz) on `gateway serve` under the keep-alive load "
             f"({p['under_load']['rps']:.0f} req/s while sampled): {p['samples']} samples, "
             f"{100 * p['idle_samples'] / max(p['samples'], 1):.1f} % idle", "",
             "Top 10 Python functions by own time (innermost Python frame of each sample; "
             "C code it calls counts here):", "", "| # | function | % of samples |",
             "| ---: | --- | ---: |"]
    for i, row in enumerate(p["python_self_top"][:10], 1):
        lines.append(f"| {i} | `{row['function']}` | {row['pct']} |")
    lines += ["", "Top 10 leaf frames (native included: system calls, the garbage collector, "
              "OpenSSL):", "", "| # | frame | % of samples |", "| ---: | --- | ---: |"]
    for i, row in enumerate(p["native_self_top"][:10], 1):
        lines.append(f"| {i} | `{row['function']}` | {row['pct']} |")
    lines += ["", "| on the stack | % of samples |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in p["marks_pct"].items()]
    hs = p.get("handshake")
    if hs:
        lines += ["", f"New connection per request ({hs['samples']} native samples): "
                  "top 10 Python functions by own time", "", "| # | function | % |",
                  "| ---: | --- | ---: |"]
        for i, row in enumerate(hs["python_self_top"][:10], 1):
            lines.append(f"| {i} | `{row['function']}` | {row['pct']} |")
        lines += ["", "| on the stack | % of samples |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in hs["marks_pct"].items()]
    lines += ["", "Where the time goes (each sample once: the outermost pipeline step it is "
              "in, else the layer around the pipeline):", "", "| stage | % of samples |",
              "| --- | ---: |"]
    for k, v in p["stages_pct"].items():
        lines.append(f"| {k} | {v} |")
    lines += ["", "Inclusive (Python functions, % of samples with the function on the stack):",
              "", "| function | % |", "| --- | ---: |"]
    for row in p["inclusive_top"][:20]:
        lines.append(f"| `{row['function']}` | {row['pct']} |")
    for phase, prof in r.get("profile_push", {}).items():
        lines += ["", f"Push {phase}, py-spy: top 10 Python functions by own time "
                  f"({prof['samples']} samples):", "", "| # | function | % |",
                  "| ---: | --- | ---: |"]
        for i, row in enumerate(prof["python_self_top"][:10], 1):
            lines.append(f"| {i} | `{row['function']}` | {row['pct']} |")
        lines += ["", "Inclusive:", "", "| function | % |", "| --- | ---: |"]
        for row in prof["inclusive_top"][:12]:
            lines.append(f"| `{row['function']}` | {row['pct']} |")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description="the benchmark (see bench/README.md)")
    ap.add_argument("--work", default=str(REPO / "var" / "bench"))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved keep-alive rounds")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per keep-alive run")
    ap.add_argument("--half-rounds", type=int, default=2,
                    help="interleaved rounds at half the gateway's throughput (and of each "
                         "server's own, phase own-half)")
    ap.add_argument("--handshake-rounds", type=int, default=3,
                    help="interleaved rounds of new connections (3: a median, not a mean)")
    ap.add_argument("--handshake-duration", type=float, default=6.0)
    ap.add_argument("--handshake-connections", type=int, default=16,
                    help="new connections in flight (over 2 load-generator processes)")
    ap.add_argument("--hold", type=int, default=1000, help="idle connections for the RSS test")
    ap.add_argument("--hold-5000", dest="hold", action="store_const", const=5000)
    ap.add_argument("--meters", type=int, default=20_000, help="synthetic meters for push")
    ap.add_argument("--full-day", dest="meters", action="store_const", const=1_000_000,
                    help="push the full 1,000,000 meters x 96 quarter-hours")
    ap.add_argument("--batch-meters", type=int, default=0,
                    help="meters per pushed batch (default 1,000; 10,000 with meter-days)")
    ap.add_argument("--push-format", choices=("records", "meter-days"), default="records",
                    help="push one JSON object per reading (the per-record format) or per "
                         "meter-day (meter-days/v1)")
    ap.add_argument("--memory-budget-mb", type=int, default=0,
                    help="gateway limits.memory_budget_mb (default: the gateway's own, raised "
                         "to 16384 with --full-day or more than 2,000 held connections)")
    ap.add_argument("--push-timeout", type=float, default=0.0,
                    help="bound on push intake and again on delivery, seconds (default 900; "
                         "3600 with --full-day)")
    ap.add_argument("--profile-duration", type=float, default=8.0)
    ap.add_argument("--only", default="memory,keepalive,half,own-half,handshake,profile,push",
                    help="comma-separated phases")
    ap.add_argument("--quick", action="store_true", help="1 round, 4 s runs, 2,000 meters")
    ap.add_argument("--no-uvloop", action="store_true", help="load generator on plain asyncio")
    ap.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="the event loop of the gateway and of the naive proxy alike "
                         "(default uvloop, the gateway's default)")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--cpu-latency-us", type=int, default=-1,
                    help="hold a PM QoS request on /dev/cpu_dma_latency for the whole run "
                         "(0: idle CPUs poll instead of halting, as tuned's latency "
                         "profiles do; machine-wide, so every server alike; needs root). "
                         "Default: the machine's own idle policy")
    ap.add_argument("--gateway-patches", default="",
                    help="run the gateway of every phase under bench/whatif.py with these "
                         "runtime patches (comma-separated; an experiment, not the baseline)")
    ap.add_argument("--whatif-rounds", type=int, default=2)
    ap.add_argument("--whatif", nargs="?", const=DEFAULT_WHATIF, default="",
                    help="after the phases, restart the gateway under bench/whatif.py with "
                         "each ';'-separated set of runtime patches and measure it "
                         f"(default sets: {DEFAULT_WHATIF!r})")
    ap.add_argument("--serve-for", type=float, default=0.0,
                    help="after start-up, print the endpoints and keep everything up this many "
                         "seconds (for manual load or profiling; at most 3600)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.handshake_rounds, args.half_rounds = 1, 4.0, 1, 1
        args.handshake_duration, args.meters, args.profile_duration = 4.0, 2000, 4.0
    if not args.push_timeout:
        args.push_timeout = 3600.0 if args.meters >= 1_000_000 else 900.0
    phases = set(args.only.split(","))
    # SIGTERM (and Ctrl-C) unwind through the finally below, which stops every
    # process this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    work = Path(args.work)
    run_dir = work / "run"
    work.mkdir(parents=True, exist_ok=True)
    # One run at a time per work directory: a second (or a --serve-for stack
    # still up) would delete the first's run directory and share its ports'
    # files. The lock goes with this process, however it ends.
    lock = (work / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"bench: another run is using {work} (wait for it, or stop it)", file=sys.stderr)
        return 2
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    pins = None if args.no_pin else cpus()
    if pins:
        os.sched_setaffinity(0, {int(c) for c in pins[1].split(",")})
    b = Bench(args, run_dir, pins)
    b.results["machine"] = machine()
    # Kept open to the end of the run: the kernel drops the request when it closes.
    qos = cpu_latency(args.cpu_latency_us)
    b.results["machine"]["cpu_latency_us"] = args.cpu_latency_us if qos is not None else None
    b.results["args"] = vars(args)
    started = time.monotonic()

    log("starting the Stack (dev PKI, dataset, simulators, receivers)")
    tenants_dir = bench_tenants(run_dir / "tenants")
    stack = Stack(tenants_dir=tenants_dir, certs_dir=work / "certs",
                  work_dir=run_dir / "stack", run_gateway=False)
    st = StackThread(stack)
    st.start()
    pki = stack.pki
    b.ca = str(pki.ca_cert)
    b.client_cert = (str(pki.client_cert("ores", "api")), str(pki.client_key("ores", "api")))
    b.sink_client = (str(pki.push_cert), str(pki.push_key))
    meter = next(m for m in stack.dataset.meters if m["owners"][-1]["tenant"] == "ores"
                 and len(m["owners"]) == 1 and not m["airplane_mode"])
    b.serial = meter["serial"]
    bodies = {m["serial"]: {**meter_rec(m), **device_block(m, stack.dataset.anchor)}
              for m in stack.dataset.meters}
    (run_dir / "bodies.json").write_text(json.dumps(bodies))
    b.results["body_bytes"] = len(json.dumps(bodies[b.serial]))
    registry = stack.registry
    hes_tenants = sorted(t.id for t in registry if "hes_consortium" in t.memberships)
    kinds = {t.id: t.kind for t in registry}
    rel_path = run_dir / "relations-bench.json"
    write_relations(run_dir / "stack" / "relations.json", rel_path,
                    args.meters, hes_tenants)

    try:
        srv_cpu, cli_cpu = (pins if pins else (None, None))
        # The static upstream (starts on the client cores; moves for "direct").
        pf = run_dir / "upstream.port"
        p = spawn("upstream", [PY, str(BENCH / "upstream.py"), "--bodies",
                               str(run_dir / "bodies.json"), "--port-file", str(pf)],
                  cli_cpu, run_dir / "upstream.log")
        b.servers["upstream"] = Server("upstream", p, wait_port_file(pf, p, "upstream"))
        # The push receivers' sink.
        pf = run_dir / "sink.port"
        p = spawn("sink", [PY, str(BENCH / "sink.py"), "--cert", str(pki.server_cert),
                           "--key", str(pki.server_key), "--ca", str(pki.ca_cert),
                           "--port-file", str(pf)], cli_cpu, run_dir / "sink.log")
        b.servers["sink"] = Server("sink", p, wait_port_file(pf, p, "sink"))
        # The gateway, from the Stack's config with the bench's upstream, relations, sinks.
        doc = tomllib.loads(stack.config_path.read_text())
        doc["gateway"]["relations"] = str(rel_path)
        # The gateway and the naive proxy run on the same event loop.
        doc["gateway"]["event_loop"] = args.event_loop
        b.results["event_loop"] = args.event_loop
        doc["upstreams"]["hes"]["url"] = f"http://{HOST}:{b.servers['upstream'].port}"
        doc["push"]["endpoints"] = {
            t.id: f"https://{HOST}:{b.servers['sink'].port}/receivers/{t.id}/readings"
            for t in registry if t.push_endpoint is not None}
        doc["push"]["max_pending_records"] = 2_000_000_000
        # Edge limits: room for the idle-connection test (defaults: 1,000 per
        # tenant, 15 s idle); every other limit stays at its default.
        doc["limits"] = {"max_connections_per_tenant": max(1000, args.hold + 1000),
                         "max_connections": max(10_000, args.hold + 2000),
                         "keepalive_timeout_s": 60.0}
        # The memory budget (default 1 GiB of RSS, then 503 for every request) is
        # below what 5,000 idle TLS connections or a 1,000,000-meter relation feed
        # take (see bench/README.md): raised for those runs only, and said so.
        budget = args.memory_budget_mb or (
            16_384 if args.meters > 100_000 or args.hold > 2000 else None)
        if budget:
            doc["limits"]["memory_budget_mb"] = budget
            log(f"gateway limits.memory_budget_mb raised to {budget} for this run")
        b.results["gateway_limits"] = doc["limits"]
        cfg = run_dir / "gateway.toml"
        cfg.write_text(toml_dump(doc))
        data_port, ops_port, _ = stack.gateway_ports
        serve = [str(Path(PY).parent / "gateway"), "serve", "--config", str(cfg)]
        if args.gateway_patches:  # an experiment: every phase on a patched gateway
            serve = [PY, str(BENCH / "whatif.py"), "--patches", args.gateway_patches, *serve[1:]]
            log(f"the gateway runs with bench/whatif.py patches: {args.gateway_patches}")
        p = spawn("gateway", serve, srv_cpu, run_dir / "gateway.log")
        b.servers["gateway"] = Server("gateway", p, data_port)
        wait_ready(ops_port, p)
        crl = run_dir / "crl.pem"
        crl.write_bytes(http_get(ops_port, "/crl.pem"))
        # nginx, same certificate, trust bundle and CRL.
        ngx = run_dir / "nginx"
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (ngx / d).mkdir(parents=True, exist_ok=True)
        nginx_port = free_port()
        conf = fill((BENCH / "nginx.conf.template").read_text(), {
            "WORK": ngx, "PORT": nginx_port, "UPSTREAM_PORT": b.servers["upstream"].port,
            "SERVER_CERT": pki.server_cert, "SERVER_KEY": pki.server_key, "CA": pki.ca_cert,
            "CRL": crl, "USER_LINE": "user root;" if os.geteuid() == 0 else ""})
        (ngx / "nginx.conf").write_text(conf)
        p = spawn("nginx", ["nginx", "-p", str(ngx), "-c", str(ngx / "nginx.conf"),
                            "-e", str(ngx / "nginx-error.log")], srv_cpu, run_dir / "nginx.log")
        b.servers["nginx"] = Server("nginx", p, nginx_port, tree=True)
        # The naive proxy.
        pf = run_dir / "naive.port"
        p = spawn("naive proxy", [PY, str(BENCH / "naive_proxy.py"), "--upstream",
                                  f"http://{HOST}:{b.servers['upstream'].port}",
                                  "--cert", str(pki.server_cert), "--key", str(pki.server_key),
                                  "--ca", str(pki.ca_cert), "--port-file", str(pf),
                                  "--loop", args.event_loop],
                  srv_cpu, run_dir / "naive.log")
        b.servers["naive"] = Server("naive", p, wait_port_file(pf, p, "naive proxy"))
        # The floor: no checks, the gateway's TLS policy and material (bench/floor.py).
        pf = run_dir / "floor.port"
        p = spawn("floor", [PY, str(BENCH / "floor.py"), "--upstream-port",
                            str(b.servers["upstream"].port), "--cert", str(pki.server_cert),
                            "--key", str(pki.server_key), "--ca", str(pki.ca_cert),
                            "--crl", str(crl), "--port-file", str(pf),
                            "--loop", args.event_loop],
                  srv_cpu, run_dir / "floor.log")
        b.servers["floor"] = Server("floor", p, wait_port_file(pf, p, "floor"))
        wait_tcp(nginx_port, b.servers["nginx"].proc)
        smoke(b)
        b.results["gateway_rss_at_start_mb"] = b.servers["gateway"].rss() / 2**20
        log(f"gateway RSS after start: {b.results['gateway_rss_at_start_mb']:.0f} MiB "
            f"({args.meters} synthetic meters in the relation feed)")
        idle0 = b.servers["gateway"].cpu()
        time.sleep(2.0)
        b.results["gateway_idle_cores"] = (b.servers["gateway"].cpu() - idle0) / 2.0
        log(f"gateway idle CPU: {b.results['gateway_idle_cores'] * 100:.1f} % of a core")

        if args.serve_for:
            serve_for(b, args.serve_for)
        if "memory" in phases:
            phase_memory(b)
        if "keepalive" in phases:
            phase_keepalive(b)
        if "half" in phases and "keepalive" in b.results:
            phase_half_load(b)
        if "own-half" in phases and "keepalive" in b.results:
            phase_own_half(b)
        if "handshake" in phases:
            phase_handshake(b)
        if "profile" in phases:
            phase_profile(b)
        if "push" in phases:
            phase_push(b, stack, hes_tenants, kinds)
        if args.whatif:
            phase_whatif(b, args.whatif, cfg, ops_port)
        for s in b.servers.values():
            if not s.alive():
                log(f"WARNING: {s.name} exited with {s.proc.returncode}")
    finally:
        for name in ("floor", "naive", "nginx", "gateway", "sink", "upstream"):
            if name in b.servers:
                b.servers[name].stop()
        st.stop()
    b.results["elapsed_s"] = time.monotonic() - started
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (work / f"results-{stamp}.json").write_text(json.dumps(b.results, indent=1, default=str))
    for raw in sorted(run_dir.glob("profile*.txt")):  # run/ is wiped by the next run
        shutil.copy(raw, work / f"{raw.stem}-{stamp}.txt")
    text = report(b) + "\n\n" + whatif_report(b.results) + "\n" + profile_report(b.results) + "\n"
    (work / "latest.md").write_text(text)
    (work / f"results-{stamp}.md").write_text(text)
    print(text)
    log(f"done in {b.results['elapsed_s']:.0f} s; results in {work}/results-{stamp}.json "
        f"and {work}/latest.md")
    return 0


def fill(template: str, values: dict[str, Any]) -> str:
    """Replace every ``@NAME@``; a placeholder left over is an error."""
    for k, v in values.items():
        template = template.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]{2,}@", template)
    if left:
        raise SystemExit(f"nginx.conf.template: no value for {', '.join(left)}")
    return template


def serve_for(b: Bench, seconds: float) -> None:
    info = {name: {"port": s.port, "pids": s.pids()} for name, s in b.servers.items()}
    info["paths"] = {"direct": f"/meters/{b.serial}", "proxied": f"/hes/meters/{b.serial}"}
    info["client"] = {"ca": b.ca, "cert": b.client_cert[0], "key": b.client_cert[1]}
    (b.work / "endpoints.json").write_text(json.dumps(info, indent=1))
    log(f"serving for {seconds:.0f} s; endpoints in {b.work / 'endpoints.json'}")
    time.sleep(min(seconds, 3600))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"GET {path}: {resp.status}")
        return body
    finally:
        conn.close()


def wait_ready(ops_port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited with {proc.returncode} (see its log)")
        with contextlib.suppress(OSError, http.client.HTTPException):
            http_get(ops_port, "/readyz")
            return
        time.sleep(0.2)
    raise SystemExit("gateway not ready in time")


def wait_tcp(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def smoke(b: Bench) -> None:
    """One request through each target: the same 200 and the same body everywhere."""
    ctx = ssl.create_default_context(cafile=b.ca)
    ctx.load_cert_chain(*b.client_cert)
    bodies = {}
    for name in ("direct", "nginx", "naive", "floor", "gateway"):
        port, _ = b.target(name)
        if name == "direct":
            conn: http.client.HTTPConnection = http.client.HTTPConnection(HOST, port, timeout=10)
            path = f"/meters/{b.serial}"
        else:
            conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=10)
            path = f"/hes/meters/{b.serial}"
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"smoke test: {name} answered {resp.status}: {body[:300]!r}")
        bodies[name] = json.loads(body)
    if any(v != bodies["direct"] for v in bodies.values()):
        raise SystemExit(f"smoke test: bodies differ: {bodies}")
    log(f"smoke test: all five targets answer 200 with the same {b.results['body_bytes']} "
        "byte meter record")


if __name__ == "__main__":
    sys.exit(main())
