"""What-if launcher: ``gateway serve`` with optional *runtime* patches, to put
numbers on the speed-ups suggested in bench/README.md without editing
``gateway/``. Experimental evidence only: the patches reach into private
internals (asyncio's SSLProtocol, the gateway's UpstreamPool) and may stop
applying when those change; each prints whether it applied.

Usage::

    python bench/whatif.py --patches sslbuf,gc serve --config FILE

Patches:

* ``sslbuf``        asyncio's SSLProtocol allocates (and zeroes) a 256 KiB
                    read buffer per TLS connection; use 32 KiB (two TLS
                    records) instead.
* ``gc``            ``gc.freeze()`` once started and a first-generation
                    threshold of 50,000 instead of 700 (fewer collections of
                    the long-lived start-up objects).
* ``sync-audit``    the data plane's audit line written at once (one
                    ``write(2)`` per request), as before the group commit.
* ``gc-log``        not a speed-up: prints the collector's pauses every 5 s.
* ``mem-log``       not a speed-up: traces Python's allocations (tracemalloc,
                    which sees ``PyMem_RawMalloc`` too, so uvloop's TLS
                    buffers; not OpenSSL's) and prints, every 3 s, the 15
                    source lines that grew most since the previous report:
                    what an idle connection is made of.
* ``loop-lag``      not a speed-up: a timer every 2 ms on the gateway's
                    event loop; every 5 s, how late it fired (p50, p99,
                    max, and how often by more than 2, 5 and 10 ms): whether
                    the latency tail is the loop held up, or queueing.
* ``calls``         not a speed-up: Python function calls per data-plane
                    request, counted by cProfile over 5 s windows (every
                    10 s), and each function's own time under it.
* ``no-checks``     not a gateway: the data plane forwards every request to
                    the ``hes`` upstream and answers its body, with no
                    identity, route, decision, quota, response check, audit
                    or metric (the lean server, TLS, the upstream client and
                    the answer's serialization stay): the floor the checks
                    sit on, to tell their cost from the machinery's.
* ``no-trace``      not a gateway: no audit event, metric, usage or access
                    line per request (``RequestTrace.account`` does nothing):
                    what the trace costs, by difference.
* ``no-response-check`` not a gateway: the upstream's answer passed on
                    unchecked (``ResponseCheck.check``): what the response
                    check costs, by difference.
* ``switch``        the interpreter's switch interval at 0.5 ms, not 5 ms:
                    a worker thread (SQLite, the audit's fsync, the
                    maintenance round) gives the GIL back to the loop sooner.
* ``no-poll``       not a gateway: no push delivery loop (each tenant's
                    once-a-second claim of the outbox, on a worker thread):
                    what those hand-overs cost the half-load tail (before
                    the one survey of the outbox for all tenants).
* ``spin``          not a gateway to keep: the loop never sleeps (a callback
                    that schedules itself again at once): whether the CPU's
                    halt and wake-up between paced requests make their cost.
* ``no-checkpoint-fsync`` not a gateway: the audit checkpoint signed and
                    written, not fsynced: what that fsync on the loop costs
                    the half-load tail.
* ``outbox-4k``     the outbox file in SQLite's default 4 KiB pages and its
                    WAL checkpointed every 1,000 of them, as before 64 KiB
                    pages (to compare the push).
* ``python-join``   a columnar part's meter-day texts joined and encoded
                    in Python (four copies of each part), as before
                    ``join_texts`` wrote them at once in C.
* ``switch-interval`` the interpreter's GIL switch interval at
                    ``WHATIF_SWITCH_MS`` (default 0.5) instead of 5 ms: how long a
                    worker thread holding the GIL can keep the loop waiting.
* ``python-runs``   a per-record push batch routed meter by meter in Python
                    (``route_runs_reference``), as before ``route_runs`` in C.
* ``general-days``  a columnar push batch parsed and routed by the general
                    path (decode, ``scan_days``, ``route_meter_days``), not
                    read from its bytes in one pass (``route_posted_days``).
* ``uvloop``        run the event loop on uvloop. The gateway's failed-
                    handshake counter (gateway/edge/_handshakes.py) hooks asyncio's
                    own SSLProtocol and stays silent under uvloop; what the
                    edge keeps per connection lives on the connection's
                    protocol (gateway.edge.PerConnection), which uvloop allows.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def patch_sslbuf() -> None:
    from asyncio import sslproto

    sslproto.SSLProtocol.max_size = 32 * 1024
    print("whatif: sslbuf applied (SSLProtocol.max_size = 32 KiB)", flush=True)


def patch_gc() -> None:
    from gateway.server import Gateway

    original = Gateway.start

    async def start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        await original(self, *args, **kwargs)
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)

    Gateway.start = start  # type: ignore[method-assign]
    print("whatif: gc applied (freeze after start, threshold 50,000)", flush=True)


def patch_sync_audit() -> None:
    """The data plane's audit line written at once, as before the group
    commit: to measure what grouping costs or saves in latency and CPU."""
    from gateway.dataplane import _trace

    async def account(self, ex, request, response):  # type: ignore[no-untyped-def]
        self.account_now(ex, request, response)

    _trace.RequestTrace.account = account  # type: ignore[method-assign]
    print("whatif: sync-audit applied", flush=True)


def patch_gc_log() -> None:
    """Not a speed-up: every 5 s, print how long the collector paused the
    process, per generation (count, total, longest), to put numbers on the
    latency tail."""
    import threading
    import time

    stats: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            stats[info["generation"]].append(time.perf_counter() - started[0])

    def report() -> None:
        while True:
            time.sleep(5)
            parts = []
            for gen, pauses in stats.items():
                taken, pauses[:] = list(pauses), []
                if taken:
                    parts.append(f"gen{gen} {len(taken)}x total {sum(taken) * 1e3:.1f} ms "
                                 f"max {max(taken) * 1e3:.2f} ms")
            print("whatif gc-log:", "; ".join(parts) or "no collection", flush=True)

    gc.callbacks.append(callback)
    threading.Thread(target=report, daemon=True, name="gc-log").start()
    print("whatif: gc-log applied", flush=True)


def patch_mem_log() -> None:
    """Not a speed-up: every 3 s, the lines whose live allocations grew most."""
    import threading
    import time
    import tracemalloc

    tracemalloc.start(1)

    def report() -> None:
        previous = tracemalloc.take_snapshot()
        while True:
            time.sleep(3)
            current = tracemalloc.take_snapshot()
            grown = current.compare_to(previous, "lineno")[:15]
            previous = current
            print("whatif mem-log:", flush=True)
            for stat in grown:
                print(f"  {stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+7d} blocks  "
                      f"{stat.traceback}", flush=True)

    threading.Thread(target=report, daemon=True, name="mem-log").start()
    print("whatif: mem-log applied", flush=True)


def patch_loop_lag() -> None:
    """Not a speed-up: how late a 2 ms timer fires on the gateway's loop."""
    import time

    from gateway.server import Gateway

    original = Gateway.start

    async def start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = await original(self, *args, **kwargs)
        loop = asyncio.get_running_loop()
        lags: list[float] = []
        state = {"due": 0.0, "report": time.perf_counter() + 5}

        def tick() -> None:
            now = time.perf_counter()
            lags.append(now - state["due"])
            if now >= state["report"]:
                taken = sorted(lags)
                lags.clear()
                n = len(taken)
                print(f"whatif loop-lag: {n} ticks, late p50 {taken[n // 2] * 1e3:.2f} "
                      f"p99 {taken[int(n * 0.99)] * 1e3:.2f} max {taken[-1] * 1e3:.2f} ms; "
                      f"> 2 ms {sum(x > 2e-3 for x in taken)}, > 5 ms "
                      f"{sum(x > 5e-3 for x in taken)}, > 10 ms {sum(x > 1e-2 for x in taken)}",
                      flush=True)
                state["report"] = now + 5
            state["due"] = time.perf_counter() + 0.002
            loop.call_later(0.002, tick)

        state["due"] = time.perf_counter() + 0.002
        loop.call_later(0.002, tick)
        return result

    Gateway.start = start  # type: ignore[method-assign]
    print("whatif: loop-lag applied", flush=True)


def patch_calls() -> None:
    """Not a speed-up: Python function calls per data-plane request (cProfile
    over a window, deterministic where a sampler is not): every 10 s after
    start-up, a 5 s window; printed per request, most called first
    (``WHATIF_ROWS`` rows of each list, 40 unless set)."""
    import cProfile
    import pstats
    import time

    from gateway.server import Gateway

    original = Gateway.start
    shown = int(os.environ.get("WHATIF_ROWS", "40"))  # rows of each list

    async def start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = await original(self, *args, **kwargs)
        loop = asyncio.get_running_loop()

        def report(prof: cProfile.Profile, began: float) -> None:
            prof.disable()
            stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
            def calls_of(function: str, where: str) -> int:
                return sum(nc for (file, _line, name), (_cc, nc, *_rest) in stats.items()
                           if name == function and file.endswith(where))

            # RequestTrace._event: called once per answered request, and not a
            # coroutine (cProfile counts each resumption of one as a call); with
            # nothing traced (no-checks, no-trace), the heads the lean server parsed.
            requests = (calls_of("_event", "dataplane/_trace.py")
                        or calls_of("on_headers_complete", "edge/_lean_head.py"))
            if requests:
                rows = sorted(((nc, tt, f"{name} ({file.rsplit('gateway/', 1)[-1]}:{line})")
                               for (file, line, name), (_cc, nc, tt, _ct, _callers)
                               in stats.items()), reverse=True)
                total = sum(r[0] for r in rows)
                print(f"whatif calls: {requests} requests in {time.perf_counter() - began:.1f} s, "
                      f"{total / requests:.1f} Python-level calls per request; most called:",
                      flush=True)
                for nc, _tt, where in rows[:shown]:
                    print(f"  {nc / requests:7.2f}  {where}", flush=True)
                print("whatif calls: own time under the profiler, µs per request (the "
                      "profiler's overhead included: proportions only):", flush=True)
                for nc, tt, where in sorted(rows, key=lambda r: -r[1])[:shown]:
                    print(f"  {tt * 1e6 / requests:7.2f}  {nc / requests:6.2f}  {where}",
                          flush=True)
                files: dict[str, list[float]] = {}
                for nc, tt, where in rows:
                    file = where.rpartition(" (")[2].partition(":")[0]
                    acc = files.setdefault(file, [0.0, 0.0])
                    acc[0] += nc
                    acc[1] += tt
                print("whatif calls: by file (C functions under '~'), own µs and calls per "
                      "request:", flush=True)
                for file, (nc, tt) in sorted(files.items(), key=lambda kv: -kv[1][1])[:30]:
                    print(f"  {tt * 1e6 / requests:7.2f}  {nc / requests:6.2f}  {file}",
                          flush=True)
            loop.call_later(5.0, window)

        def window() -> None:
            prof = cProfile.Profile()
            prof.enable()
            loop.call_later(5.0, report, prof, time.perf_counter())

        loop.call_later(10.0, window)
        return result

    Gateway.start = start  # type: ignore[method-assign]
    print("whatif: calls applied", flush=True)


def patch_no_checks() -> None:
    """Not a gateway: forward and answer, nothing checked (see the docstring)."""
    from gateway.dataplane import _pipeline
    from gateway.edge import Answer

    async def bare(self, request):  # type: ignore[no-untyped-def]
        path = request.raw_path
        ex = _pipeline.Exchange()
        upstream = await self.upstreams.call("hes", request.method, path[len("/hes"):],
                                             {"X-Request-Id": ex.incident}, None)
        return Answer(upstream.status, upstream.body, content_type="application/json")

    _pipeline.DataPlane.handle = bare  # type: ignore[method-assign]
    print("whatif: no-checks applied", flush=True)


def patch_no_trace() -> None:
    """Not a gateway: nothing traced per request (see the docstring)."""
    from gateway.dataplane import _trace

    async def account(self, ex, request, response):  # type: ignore[no-untyped-def]
        return None

    _trace.RequestTrace.account = account  # type: ignore[method-assign]
    print("whatif: no-trace applied", flush=True)


def patch_no_response_check() -> None:
    """Not a gateway: the upstream's answer unchecked (see the docstring)."""
    from gateway.dataplane import _responsecheck
    from gateway.edge import Answer

    def check(self, ex, facts, relations, upstream, now):  # type: ignore[no-untyped-def]
        return Answer(upstream.status, upstream.body, content_type="application/json")

    _responsecheck.ResponseCheck.check = check  # type: ignore[method-assign]
    print("whatif: no-response-check applied", flush=True)


def patch_no_audit_wait() -> None:
    """Not a gateway: the audit line chained and written with its group,
    but the answer sent without waiting for the write (no trace, no answer
    broken): what the wait itself costs, the suspension and resumption of
    the request's coroutines."""
    from gateway.dataplane import _trace

    async def account(self, ex, request, response):  # type: ignore[no-untyped-def]
        event = self._event(ex, request, response)
        self.audit.record_soon(event)
        self._after(ex, event, response)

    _trace.RequestTrace.account = account  # type: ignore[method-assign]
    print("whatif: no-audit-wait applied", flush=True)


def patch_no_after() -> None:
    """Not a gateway: the audit line written, but no metrics, usage or SOC
    signal per request (RequestTrace._after): what those cost."""
    from gateway.dataplane import _trace

    def after(self, ex, event, response):  # type: ignore[no-untyped-def]
        return None

    _trace.RequestTrace._after = after  # type: ignore[method-assign]
    print("whatif: no-after applied", flush=True)


def patch_no_audit_line() -> None:
    """Not a gateway: the request's event built and its metrics, usage and
    SOC signal kept, but no audit line chained or written: what the line
    costs (its record, canonical JSON, hash, group and wait)."""
    from gateway.dataplane import _trace

    async def account(self, ex, request, response):  # type: ignore[no-untyped-def]
        self._after(ex, self._event(ex, request, response), response)

    _trace.RequestTrace.account = account  # type: ignore[method-assign]
    print("whatif: no-audit-line applied", flush=True)


def patch_stalls() -> None:
    """Not a speed-up: what the loop was doing when it stalled. The loop
    notes a heartbeat every millisecond; a watchdog thread looks every
    millisecond and, when the beat is over 4 ms old, prints the main
    thread's Python stack once per stall (the stack it holds when the
    watchdog gets the GIL: at worst the interpreter's switch interval) and,
    when the beat comes back, how long the stall was. ``WHATIF_STALL_MS``
    sets the threshold (default 4; under about 2 the loop's millisecond
    timers report their own granularity)."""
    import threading
    import time
    import traceback

    from gateway.server import Gateway

    original = Gateway.start

    async def start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = await original(self, *args, **kwargs)
        loop = asyncio.get_running_loop()
        main = threading.get_ident()
        beat = [time.perf_counter()]

        def tick() -> None:
            beat[0] = time.perf_counter()
            loop.call_later(0.001, tick)

        limit = float(os.environ.get("WHATIF_STALL_MS", "4")) / 1e3

        def watch() -> None:
            seen = 0.0
            stack = ""
            for _ in range(10_000_000):  # bounded: about three hours of looks
                time.sleep(0.001)
                last = beat[0]
                late = time.perf_counter() - last
                if late > limit and last != seen:
                    seen = last
                    frame = sys._current_frames().get(main)
                    stack = "".join(traceback.format_stack(frame, limit=12)) if frame else "?"
                elif last != seen and stack:
                    print(f"whatif stall: {(last - seen) * 1e3:.1f} ms at "
                          f"{time.strftime('%H:%M:%S')}\n{stack}", flush=True)
                    stack = ""

        threading.Thread(target=watch, daemon=True, name="whatif-stalls").start()
        loop.call_later(0.001, tick)
        return result

    Gateway.start = start  # type: ignore[method-assign]
    print("whatif: stalls applied", flush=True)


def patch_switch() -> None:
    """The interpreter's switch interval (how long a thread that wants the
    GIL waits before it asks the holder to drop it) at 0.5 ms instead of
    5 ms: whether the loop's waits on worker threads make the tail."""
    sys.setswitchinterval(0.0005)
    print("whatif: switch applied (switch interval 0.5 ms)", flush=True)


def patch_no_poll() -> None:
    """Not a gateway: no push delivery loop and no survey of the outbox at
    all (nothing to deliver in a keep-alive run): what they cost the data
    plane's tail. Before the one survey for all tenants, each tenant's loop
    claimed from the outbox once a second, a hand-over to a worker thread
    and back each."""
    from gateway.push import _delivery

    async def start(self):  # type: ignore[no-untyped-def]
        return None

    _delivery.Delivery.start = start  # type: ignore[method-assign]
    print("whatif: no-poll applied", flush=True)


def patch_spin() -> None:
    """Not a speed-up to keep: the loop never sleeps (a callback that
    schedules itself again at once, so each iteration polls with no wait):
    what a paced request pays for the CPU going idle and waking up between
    requests (in a VM, a halt and an interrupt through the host)."""
    from gateway.server import Gateway

    original = Gateway.start

    async def start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = await original(self, *args, **kwargs)
        loop = asyncio.get_running_loop()

        def spin() -> None:
            loop.call_soon(spin)

        loop.call_soon(spin)
        return result

    Gateway.start = start  # type: ignore[method-assign]
    print("whatif: spin applied", flush=True)


def patch_no_checkpoint_fsync() -> None:
    """Not a gateway: the audit checkpoint's ``fsync`` skipped (the line
    signed and written, not made durable): what the fsync costs the
    half-load tail (the data path's in the log's own thread since
    2026-12-08; before, on the loop)."""
    from gateway.audit import _chain, _sync

    class _Os:
        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(os, name)

        @staticmethod
        def fsync(fd: int) -> None:
            return None

    _chain.os = _sync.os = _Os()  # type: ignore[assignment]
    print("whatif: no-checkpoint-fsync applied", flush=True)


def patch_outbox_4k() -> None:
    """The outbox file as before 64 KiB pages: SQLite's default 4 KiB pages
    and its WAL checkpointed every 1,000 of them (to compare the push)."""
    from gateway.push import _outbox_backends

    _outbox_backends.PAGE_SIZE = 4096
    _outbox_backends.WAL_AUTOCHECKPOINT_PAGES = 1000
    print("whatif: outbox-4k applied", flush=True)


def patch_python_join() -> None:
    """A columnar part's meter-day texts joined and encoded in Python, as
    before join_texts wrote them at once in C (to compare the push)."""
    from gateway.core.push import canonical

    canonical._native = None  # encode_days' fallback: the Python join
    print("whatif: python-join applied", flush=True)


def patch_switch_interval() -> None:
    """The GIL's switch interval shortened (``WHATIF_SWITCH_MS``, default
    0.5 ms): a worker thread running Python (the outbox, the duties, a push
    intake) holds the loop back at most that long instead of 5 ms."""
    interval = float(os.environ.get("WHATIF_SWITCH_MS", "0.5")) / 1e3
    sys.setswitchinterval(interval)
    print(f"whatif: switch-interval applied ({interval * 1e3:g} ms)", flush=True)


def patch_python_runs() -> None:
    """The per-record batch's meter-by-meter routing in Python, as before
    gateway/core/_native_runs.c."""
    from gateway.core.push import readings

    readings._native = None  # route_runs' reference: route_runs_reference
    print("whatif: python-runs applied", flush=True)


def patch_general_days() -> None:
    """The columnar push by the general path (decode, scan_days,
    route_meter_days), as before it was read from its bytes in one pass."""
    from gateway.push import _service

    _service.route_posted_days = lambda *args, **kwargs: None  # type: ignore[assignment]
    print("whatif: general-days applied", flush=True)


def patch_uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print("whatif: uvloop applied", flush=True)


PATCHES = {"sslbuf": patch_sslbuf, "gc": patch_gc,
           "uvloop": patch_uvloop, "sync-audit": patch_sync_audit, "gc-log": patch_gc_log,
           "mem-log": patch_mem_log, "loop-lag": patch_loop_lag,
           "calls": patch_calls, "no-checks": patch_no_checks, "no-trace": patch_no_trace,
           "no-response-check": patch_no_response_check,
           "no-audit-wait": patch_no_audit_wait, "no-after": patch_no_after,
           "no-audit-line": patch_no_audit_line, "switch": patch_switch,
           "stalls": patch_stalls, "no-poll": patch_no_poll,
           "spin": patch_spin, "no-checkpoint-fsync": patch_no_checkpoint_fsync,
           "outbox-4k": patch_outbox_4k, "general-days": patch_general_days,
           "python-join": patch_python_join, "python-runs": patch_python_runs,
           "switch-interval": patch_switch_interval}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patches", default="", help=f"comma-separated: {', '.join(PATCHES)}")
    args, rest = p.parse_known_args()
    for name in filter(None, args.patches.split(",")):
        if name not in PATCHES:
            p.error(f"unknown patch {name!r}")
        PATCHES[name]()
    from gateway.cli import main as gateway_main

    return int(gateway_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
