"""SIGHUP to `gateway serve` (DESIGN.md §4): a relation
snapshot compiled with `gateway relations compile` is swapped while traffic
flows. The new snapshot decides the next request, on a connection that was
already open, and no request fails while it is read (the reading happens in a
worker thread; only the reference swap runs on the event loop)."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.core.relations.index import native_available
from gateway.demo._stack import Stack

from .conftest import REPO, Client, RunningStack


def _compile(feed: Path, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "gateway", "relations", "compile", "--feed",
                    str(feed), "--out", str(out)], check=True, capture_output=True,
                   timeout=60, cwd=REPO)


def test_sighup_swaps_a_compiled_snapshot_under_traffic(tmp_path: Path) -> None:
    stack = RunningStack(Stack(tenants_dir=REPO / "tenants", certs_dir=tmp_path / "certs",
                               work_dir=tmp_path / "work", run_gateway=False)).start()
    config = stack.stack.config_path
    feed = stack.stack.work_dir / "relations.json"
    snapshot = tmp_path / "relations.snap"
    _compile(feed, snapshot)
    text = config.read_text()
    # This serve runs on plain asyncio ([gateway] event_loop; the default,
    # uvloop, is what test_workers.py serves on).
    config.write_text(text.replace(f'relations = "{feed.resolve()}"', f'relations = "{snapshot}"')
                      .replace("[gateway]\n", '[gateway]\nevent_loop = "asyncio"\n', 1))
    assert str(snapshot) in config.read_text()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = stack.stack.gateway_ports[0]
    meter = next(m["serial"] for m in stack.stack.dataset.meters
                 if m["owners"][-1]["tenant"] == "ores" and not m["airplane_mode"])
    client: Client | None = None
    try:
        deadline = time.monotonic() + 30
        while client is None:  # bounded wait for the gateway
            probe = Client(port, stack.context("ores"))
            try:
                if probe.get(f"/hes/meters/{meter}").status == 200:
                    client = probe
                    break
            except (OSError, http.client.HTTPException):
                pass
            probe.close()
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        # The operator compiles a feed in which ORES no longer holds the meter...
        doc = json.loads(feed.read_text())
        doc["relations"] = [r for r in doc["relations"] if r["id"] != meter]
        changed = tmp_path / "changed.json"
        changed.write_text(json.dumps(doc))
        _compile(changed, snapshot)  # atomic replace: the gateway never sees half
        proc.send_signal(signal.SIGHUP)
        statuses = []
        for _ in range(300):  # ...and traffic goes on while it reloads (bounded)
            statuses.append(client.get(f"/hes/meters/{meter}").status)
            if statuses[-1] == 403:
                break
            time.sleep(0.02)
        assert statuses[-1] == 403, statuses  # same connection, new snapshot
        assert set(statuses) <= {200, 403}  # nothing failed in between
        # A corrupt snapshot is refused; the running one stays.
        snapshot.write_bytes(snapshot.read_bytes()[:100])
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None
        assert client.get(f"/hes/meters/{meter}").status == 403
        assert client.get("/itsm/tickets").status == 200
        ops = http.client.HTTPConnection("127.0.0.1", stack.stack.gateway_ports[1], timeout=10)
        ops.request("GET", "/metrics")
        scraped = ops.getresponse().read().decode()
        assert 'gateway_event_loop_info{loop="asyncio"} 1.0' in scraped
        impl = "c" if native_available() else "python"
        assert f'gateway_native_info{{impl="{impl}"}} 1.0' in scraped
        ops.close()
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        stack.stop()
