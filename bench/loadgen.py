"""An HTTP/1.1 load generator that presents a client certificate.

``wrk`` and ``h2load`` cannot present a client certificate, so this one is
written on asyncio (uvloop when installed): a bare ``asyncio.Protocol`` per
connection that writes a prebuilt request and parses just enough of the
answer (status line, Content-Length or chunked end) to know it is complete.
It runs in its own process(es), so its CPU is never the server's; it reports
its own CPU (utime + stime from /proc/self/stat over the measured window)
and, given ``--cpu-pids``, the server processes' CPU over the same window.

Modes:

* ``keepalive`` (default): ``--connections`` persistent connections, each
  sends its next request as soon as the previous answer is complete (closed
  loop), or paced to ``--rate`` requests/s in total (each connection on its
  own evenly spaced schedule; latency from the actual send).
* ``handshake``: every request on a new connection: TCP connect, full TLS
  handshake with the client certificate (no session resumption), one request
  with ``Connection: close``; ``--connections`` of these in flight.
* ``hold``: open ``--hold`` connections (``--connections`` handshakes in
  flight), one request on each so the server has really served it, then keep
  them idle; prints ``{"event": "ready", ...}`` and waits for a line on
  stdin (or ``--hold-s``) before closing them all.

Every loop is bounded in time (``--warmup`` + ``--duration``, a hard deadline
after that) and in count (``--max-requests``). The result is one JSON line
on stdout.

Example::

    python bench/loadgen.py --port 8443 --path /hes/meters/1SAG... \
        --ca ca.pem --cert ores/api.pem --key ores/api.key --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import ssl
import sys
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, cast

CLK_TCK = os.sysconf("SC_CLK_TCK")
perf = time.perf_counter


def proc_cpu_s(pid: int | str = "self") -> float:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = raw[raw.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_of(pids: list[int]) -> float:
    return sum(proc_cpu_s(p) for p in pids)


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8443
    path: str = "/"
    method: str = "GET"
    tls: bool = True
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_hostname: str = "localhost"
    headers: list[str] = field(default_factory=list)
    mode: str = "keepalive"
    connections: int = 64
    rate: float = 0.0
    warmup: float = 1.0
    duration: float = 10.0
    max_requests: int = 5_000_000
    hold: int = 1000
    hold_s: float = 120.0
    expect: int = 200
    processes: int = 1
    uvloop: bool = True
    verify_server: bool = True
    timeline: str | None = None  # where to write each answer's send time and latency

    def request(self, close: bool = False) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {self.server_hostname}",
                 "User-Agent: bench-loadgen", *self.headers]
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        if not self.verify_server:
            # The server still verifies *our* certificate in full; skipping the
            # check of its certificate only saves the load generator CPU.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert and self.key:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx


@dataclass
class WorkerResult:
    requests: int = 0  # complete answers with the expected status inside the window
    errors: int = 0  # wrong status, broken connection, failed connect
    statuses: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0
    cpu_s: float = 0.0
    reconnects: int = 0
    skipped: int = 0  # paced sends skipped: the answer before came after their slot
    truncated: bool = False
    latencies: bytes = b""  # array('f') of milliseconds
    sent: bytes = b""  # with --timeline: array('d') of send times (s into the window)
    note: str = ""


class _Window:
    """When to count: [start, end) after the common start, and the stop rules."""

    def __init__(self, cfg: Config, per_process_max: int) -> None:
        now = perf()
        self.start = now + cfg.warmup
        self.end = self.start + cfg.duration
        self.max = per_process_max
        self.count = 0
        self.errors = 0
        self.skipped = 0
        self.statuses: Counter[int] = Counter()
        self.lat = array("f")
        self.sent: array[float] | None = array("d") if cfg.timeline else None
        self.stopping = False
        self.truncated_at: float | None = None
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None

    def record(self, t0: float, t1: float, status: int, expect: int) -> None:
        if t1 < self.start or t1 >= self.end or self.truncated_at is not None:
            return
        self.statuses[status] += 1
        if status != expect:
            self.errors += 1
            return
        self.count += 1
        if t0 >= self.start:
            self.lat.append((t1 - t0) * 1000.0)
            if self.sent is not None:
                self.sent.append(t0 - self.start)
        if self.count >= self.max:
            self.truncated_at = t1


class _KeepAlive(asyncio.Protocol):
    __slots__ = ("buf", "closed", "gen", "interval", "need", "next_at", "offset", "status", "t0",
                 "transport")

    def __init__(self, gen: _Generator, interval: float, offset: float) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.need = -1
        self.status = 0
        self.t0 = 0.0
        self.interval = interval
        self.offset = offset
        self.next_at = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self) -> None:
        if self.gen.window.stopping or self.closed or self.transport is None:
            return
        self.need = -1
        self.buf = b""
        self.t0 = perf()
        self.transport.write(self.gen.req)

    def schedule_next(self) -> None:
        if self.interval <= 0:
            self.send()
            return
        self.next_at += self.interval
        now = perf()
        if self.next_at <= now:
            # Behind schedule (the answer came later than the interval): the
            # slots missed are skipped, no burst to catch up, and the
            # connection keeps its phase. Restarting it from "now" instead
            # put every connection held up by the same pause on the same
            # schedule: from then on they sent together, a burst each
            # interval, and the latency measured was that burst's queue.
            missed = int((now - self.next_at) // self.interval) + 1
            self.next_at += missed * self.interval
            self.gen.window.skipped += missed
        self.gen.loop.call_later(self.next_at - now, self.send)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end].lower()
            self.status = int(head[9:12])
            cl = head.find(b"\r\ncontent-length:")
            if cl >= 0:
                eol = head.find(b"\r\n", cl + 2)
                self.need = end + 4 + int(head[cl + 17:eol if eol >= 0 else None])
            elif b"chunked" in head:
                self.need = 0  # chunked: complete at the last-chunk marker
            else:
                self.need = end + 4
        if self.need == 0:
            if not buf.endswith(b"0\r\n\r\n"):
                self.buf = buf
                return
        elif len(buf) < self.need:
            self.buf = buf
            return
        self.buf = b""
        t1 = perf()
        self.gen.window.record(self.t0, t1, self.status, self.gen.cfg.expect)
        self.gen.done(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gen.lost(self)


class _Generator:
    def __init__(self, cfg: Config, connections: int, rate: float, per_process_max: int) -> None:
        self.cfg = cfg
        self.connections = connections
        self.rate = rate
        self.per_process_max = per_process_max
        self.req = cfg.request()
        self.ctx = cfg.ssl_context()
        self.loop = asyncio.get_running_loop()
        self.conns: list[_KeepAlive] = []
        self.reconnects = 0
        self.window = _Window(cfg, per_process_max)  # replaced at the common start
        self.holding = False
        self._background: set[asyncio.Future[None]] = set()  # reconnects in flight

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def connect(self, interval: float = 0.0, offset: float = 0.0) -> _KeepAlive:
        _, proto = await self.loop.create_connection(
            lambda: _KeepAlive(self, interval, offset), self.cfg.host, self.cfg.port,
            ssl=self.ctx, server_hostname=self.cfg.server_hostname if self.ctx else None)
        assert isinstance(proto, _KeepAlive)
        return proto

    async def open_all(self, n: int, interval: float = 0.0) -> None:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                offset = interval * i / max(n, 1)
                for attempt in range(3):
                    try:
                        self.conns.append(await asyncio.wait_for(self.connect(interval, offset),
                                                                 15))
                        return
                    except (OSError, TimeoutError, ssl.SSLError):
                        if attempt == 2:
                            self.window.errors += 1
                        await asyncio.sleep(0.05)

        await asyncio.gather(*(one(i) for i in range(n)))

    def done(self, conn: _KeepAlive) -> None:
        if self.holding:
            self._hold_left -= 1
            if self._hold_left == 0:
                self._hold_ready.set()
            return
        if not self.window.stopping:
            conn.schedule_next()

    def lost(self, conn: _KeepAlive) -> None:
        if self.window.stopping or self.holding:
            return
        self.window.errors += 1
        self.reconnects += 1
        if conn in self.conns:
            self.conns.remove(conn)

        async def again() -> None:
            try:
                new = await self.connect(conn.interval, 0.0)
            except (OSError, ssl.SSLError):
                await asyncio.sleep(0.1)
                if not self.window.stopping:
                    self._spawn(again())
                return
            self.conns.append(new)
            new.next_at = perf()
            new.send()

        self._spawn(again())

    async def run_keepalive(self, barrier: Any) -> WorkerResult:
        interval = self.connections / self.rate if self.rate > 0 else 0.0
        await self.open_all(self.connections, interval)
        if barrier is not None:
            await self.loop.run_in_executor(None, barrier.wait)
        self.window = w = _Window(self.cfg, self.per_process_max)
        now = perf()
        for c in self.conns:
            if interval:  # evenly spread first sends, then every `interval` per connection
                c.next_at = now + c.offset
                self.loop.call_later(c.offset, c.send)
            else:
                c.send()
        return await self._measure(w)

    async def _measure(self, w: _Window) -> WorkerResult:
        await asyncio.sleep(max(w.start - perf(), 0))
        w.cpu_start = proc_cpu_s()
        # A window by the clock, or cut short by the request cap: polled (noqa).
        while perf() < w.end and w.truncated_at is None:  # noqa: ASYNC110
            await asyncio.sleep(min(0.05, max(w.end - perf(), 0)))
        w.cpu_end = proc_cpu_s()
        end = w.truncated_at or w.end
        w.stopping = True
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()
        await asyncio.sleep(0.05)
        return WorkerResult(
            requests=w.count, errors=w.errors,
            statuses={str(k): v for k, v in w.statuses.items()},
            window_s=end - w.start, cpu_s=(w.cpu_end or 0) - (w.cpu_start or 0),
            reconnects=self.reconnects, skipped=w.skipped, truncated=w.truncated_at is not None,
            latencies=w.lat.tobytes(), sent=w.sent.tobytes() if w.sent is not None else b"")

    async def run_handshake(self, barrier: Any) -> WorkerResult:
        if barrier is not None:
            await self.loop.run_in_executor(None, barrier.wait)
        self.window = w = _Window(self.cfg, self.per_process_max)
        req = self.cfg.request(close=True)
        cfg = self.cfg

        async def one_client() -> None:
            while not w.stopping:
                t0 = perf()
                writer = None
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(
                        cfg.host, cfg.port, ssl=self.ctx,
                        server_hostname=cfg.server_hostname if self.ctx else None), 15)
                    writer.write(req)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
                    status = int(head[9:12])
                    low = head.lower()
                    cl = low.find(b"\r\ncontent-length:")
                    if cl >= 0:
                        eol = low.find(b"\r\n", cl + 2)
                        await reader.readexactly(int(low[cl + 17:eol]))
                    else:
                        await reader.read()
                    w.record(t0, perf(), status, cfg.expect)
                except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError,
                        ValueError):
                    if w.start <= perf() < w.end:
                        w.errors += 1
                    await asyncio.sleep(0.01)
                finally:
                    if writer is not None:
                        writer.transport.abort()  # no close_notify round trip to wait for
        tasks = [asyncio.ensure_future(one_client()) for _ in range(self.connections)]
        result = await self._measure(w)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return result

    async def run_hold(self) -> WorkerResult:
        self.holding = True
        self._hold_left = 0
        self._hold_ready = asyncio.Event()
        t0 = perf()
        await self.open_all(self.cfg.hold)
        self._hold_left = len(self.conns)
        for c in self.conns:
            c.send()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hold_ready.wait(), 60)
        opened = len(self.conns)
        answered = opened - self._hold_left
        alive = sum(1 for c in self.conns if not c.closed)
        print(json.dumps({"event": "ready", "open": alive, "answered": answered,
                          "failed": self.window.errors, "open_s": round(perf() - t0, 3)}),
              flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.loop.run_in_executor(None, sys.stdin.readline),
                                   self.cfg.hold_s)
        still = sum(1 for c in self.conns if not c.closed)
        for c in self.conns:
            if c.transport is not None:
                c.transport.abort()
        return WorkerResult(requests=answered, errors=self.window.errors,
                            note=f"still open at the end: {still}")


def _loop_factory(cfg: Config) -> Any:
    if not cfg.uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _worker(cfg: Config, connections: int, rate: float, per_max: int, barrier: Any,
            queue: Any) -> WorkerResult:
    async def go() -> WorkerResult:
        gen = _Generator(cfg, connections, rate, per_max)
        runner = gen.run_handshake if cfg.mode == "handshake" else gen.run_keepalive
        hard = cfg.warmup + cfg.duration + 60
        return await asyncio.wait_for(runner(barrier), hard)

    with asyncio.Runner(loop_factory=_loop_factory(cfg)) as r:
        try:
            result = r.run(go())
        except Exception as exc:  # reported, never hangs the parent
            result = WorkerResult(errors=1, note=f"{type(exc).__name__}: {exc}")
    if queue is not None:
        queue.put(asdict(result))
    return result


def _percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def run(cfg: Config, cpu_pids: list[int] | None = None) -> dict[str, Any]:
    """Run the load (in ``cfg.processes`` worker processes) and summarise."""
    cpu_pids = cpu_pids or []
    p = max(1, cfg.processes)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(p + 1)
    queue = ctx.Queue()
    procs = []
    for i in range(p):
        conns = cfg.connections // p + (1 if i < cfg.connections % p else 0)
        procs.append(ctx.Process(target=_worker, args=(cfg, conns, cfg.rate / p,
                                                       max(1, cfg.max_requests // p), barrier,
                                                       queue), daemon=True))
    for proc in procs:
        proc.start()
    # A worker that died before the start (refused connections ...) breaks it.
    with contextlib.suppress(Exception):
        barrier.wait(timeout=60)
    start = perf()
    time.sleep(max(0.0, start + cfg.warmup - perf()))
    s0 = cpu_of(cpu_pids)
    time.sleep(max(0.0, start + cfg.warmup + cfg.duration - perf()))
    s1 = cpu_of(cpu_pids)
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(results) < p and time.monotonic() < deadline:
        try:
            results.append(queue.get(timeout=max(0.1, deadline - time.monotonic())))
        except Exception:
            break
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    return summarise(cfg, [WorkerResult(**r) for r in results], s1 - s0, bool(cpu_pids))


def summarise(cfg: Config, results: list[WorkerResult], server_cpu: float,
              have_server: bool) -> dict[str, Any]:
    lat: list[float] = []
    statuses: Counter[str] = Counter()
    for r in results:
        a = array("f")
        a.frombytes(r.latencies)
        lat.extend(a)
        statuses.update(r.statuses)
    lat.sort()
    requests = sum(r.requests for r in results)
    rps = sum(r.requests / r.window_s for r in results if r.window_s > 0)
    window = max((r.window_s for r in results), default=0.0)
    served = rps * window
    out: dict[str, Any] = {
        "mode": cfg.mode, "connections": cfg.connections, "rate": cfg.rate,
        "processes": max(1, cfg.processes), "requests": requests,
        "errors": sum(r.errors for r in results), "statuses": dict(statuses),
        "window_s": round(window, 3), "rps": round(rps, 1),
        "p50_ms": round(_percentile(lat, 0.50), 3), "p90_ms": round(_percentile(lat, 0.90), 3),
        "p99_ms": round(_percentile(lat, 0.99), 3), "max_ms": round(lat[-1], 3) if lat else None,
        "loadgen_cpu_s": round(sum(r.cpu_s for r in results), 3),
        "loadgen_cpu_us_per_req": round(sum(r.cpu_s for r in results) / served * 1e6, 1)
        if served else None,
        "reconnects": sum(r.reconnects for r in results),
        "skipped_sends": sum(r.skipped for r in results),
        "truncated": any(r.truncated for r in results),
        "notes": [r.note for r in results if r.note],
        "workers": len(results),
    }
    if cfg.timeline:
        out["timeline"] = write_timeline(cfg.timeline, results)
        out["slow_episodes"] = slow_episodes(cfg.timeline, out["p99_ms"])
    if have_server:
        out["server_cpu_s"] = round(server_cpu, 3)
        out["server_cpu_us_per_req"] = round(server_cpu / served * 1e6, 1) if served else None
        out["server_cores"] = round(server_cpu / window, 3) if window else None
    return out


def write_timeline(path: str, results: list[WorkerResult]) -> str:
    """Every counted answer as ``[send time s into the window, latency ms]``,
    in send order, one JSON array per line (``--timeline``): when the slow
    ones were sent, to tell a stall (many at once) from a queue."""
    rows: list[tuple[float, float]] = []
    for r in results:
        sent, lat = array("d"), array("f")
        sent.frombytes(r.sent)
        lat.frombytes(r.latencies)
        rows.extend(zip(sent, lat, strict=True))
    rows.sort()
    with open(path, "w", encoding="ascii") as fh:
        fh.writelines(f"[{t:.6f},{ms:.3f}]\n" for t, ms in rows)
    return path


def slow_episodes(path: str, threshold_ms: float, gap_s: float = 0.02) -> dict[str, Any]:
    """The answers slower than ``threshold_ms`` in a timeline, grouped into
    episodes (slow answers sent less than ``gap_s`` apart): how many, and
    the largest. Many slow answers in few episodes is a stall, not a queue."""
    episodes: list[list[float]] = []  # [first send, last send, count, worst ms]
    with open(path, encoding="ascii") as fh:
        for line in fh:
            t, ms = json.loads(line)
            if ms <= threshold_ms:
                continue
            if episodes and t - episodes[-1][1] < gap_s:
                last = episodes[-1]
                last[1], last[2], last[3] = t, last[2] + 1, max(last[3], ms)
            else:
                episodes.append([t, t, 1, ms])
    biggest = sorted(episodes, key=lambda e: -e[2])[:5]
    return {"threshold_ms": threshold_ms, "slow": int(sum(e[2] for e in episodes)),
            "episodes": len(episodes),
            "largest": [{"at_s": round(e[0], 3), "span_ms": round((e[1] - e[0]) * 1e3, 1),
                         "slow": int(e[2]), "worst_ms": round(e[3], 1)} for e in biggest]}


def hold(cfg: Config) -> dict[str, Any]:
    """``--mode hold`` in this process (the caller talks to it over stdin/stdout)."""
    async def go() -> WorkerResult:
        return await _Generator(cfg, cfg.connections, 0.0, cfg.max_requests).run_hold()

    with asyncio.Runner(loop_factory=_loop_factory(cfg)) as r:
        res = r.run(go())
    return {"mode": "hold", "answered": res.requests, "errors": res.errors, "note": res.note}


def parse_args(argv: list[str] | None = None) -> tuple[Config, list[int]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--method", default="GET")
    p.add_argument("--plain", action="store_true", help="plain HTTP, no TLS")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--server-hostname", default="localhost")
    p.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    p.add_argument("--mode", choices=("keepalive", "handshake", "hold"), default="keepalive")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.0, help="total requests/s (0: closed loop)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--max-requests", type=int, default=5_000_000)
    p.add_argument("--hold", type=int, default=1000, help="connections to hold (hold mode)")
    p.add_argument("--hold-s", type=float, default=120.0)
    p.add_argument("--expect", type=int, default=200)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--no-verify-server", action="store_true",
                   help="do not verify the server certificate (saves load-generator CPU per "
                        "handshake; the server still verifies the client certificate)")
    p.add_argument("--cpu-pids", default="", help="comma-separated server pids to meter")
    p.add_argument("--timeline", help="write each answer's send time and latency to this file "
                                      "(JSON lines) and summarise the answers slower than p99 "
                                      "into episodes (keepalive mode)")
    a = p.parse_args(argv)
    if a.duration <= 0 or a.duration > 600 or a.max_requests <= 0:
        p.error("--duration must be in (0, 600] and --max-requests positive")
    cfg = Config(host=a.host, port=a.port, path=a.path, method=a.method, tls=not a.plain,
                 ca=a.ca, cert=a.cert, key=a.key, server_hostname=a.server_hostname,
                 headers=a.header, mode=a.mode, connections=a.connections, rate=a.rate,
                 warmup=a.warmup, duration=a.duration, max_requests=a.max_requests,
                 hold=a.hold, hold_s=a.hold_s, expect=a.expect, processes=a.processes,
                 uvloop=not a.no_uvloop, verify_server=not a.no_verify_server,
                 timeline=a.timeline)
    pids = [int(x) for x in a.cpu_pids.split(",") if x.strip()]
    return cfg, pids


def main() -> None:
    cfg, pids = parse_args()
    out = hold(cfg) if cfg.mode == "hold" else run(cfg, pids)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
