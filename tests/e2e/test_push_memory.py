"""One tenant's push never shuts the other tenants out (D1 availability).

- Each push form has a body cap (``[limits] max_push_records_mb``,
  ``max_push_meter_days_mb``): beyond it, 413 ``payload-too-large`` naming the
  limits, before the body is parsed; nothing is queued.
- One large push at a time (``max_push_in_progress``): another gets 503 +
  ``Retry-After`` before its body is read; a small one is not held up.
- A real ``gateway serve`` process with a memory budget takes the largest
  accepted per-record batch while another tenant queries: every query is
  answered, and the process's peak RSS stays within the budget.
- ``/readyz`` says "not ready" while the data plane sheds load for memory.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.demo._stack import Stack
from gateway.demo.simulators import CONTROL_HEADER
from gateway.problem import CONTENT_TYPE
from gateway.tls._policy import client_context

from .conftest import HOST, REPO, Client, RunningStack, start_stack

MiB = 1024 * 1024
SMALL_LIMITS = "max_push_records_mb = 1\nmax_push_meter_days_mb = 2\n"
PUSHER = ("hes-operator", "pusher")


def ores_meters(stack: Stack) -> list[str]:
    return [m["serial"] for m in stack.dataset.meters
            if [o["tenant"] for o in m["owners"]] == ["ores"] and not m["airplane_mode"]
            and m["utility"] == "electricity"]


def records_batch(stack: Stack, batch_id: str, limit: int) -> bytes:
    """ORES readings (distinct meter, instant, OBIS) filling at most ``limit`` bytes."""
    meters = ores_meters(stack)
    day = datetime.fromisoformat(stack.dataset.anchor) - timedelta(days=1)
    head = f'{{"batch_id":"{batch_id}","source":"hes","records":['.encode()
    parts: list[bytes] = []
    size, k = len(head) + 2, 0
    while True:
        q, c = divmod(k, 40)
        at = (day + timedelta(minutes=15 * (q % 96)) - timedelta(days=q // 96)).isoformat()
        for meter in meters:
            rec = (f'{{"meter":"{meter}","timestamp":"{at}","obis":"1-0:1.8.{c}",'
                   f'"value":{k % 97},"unit":"kWh","quality":"01"}}').encode()
            if size + len(rec) + 1 > limit:
                return head + b",".join(parts) + b"]}"
            parts.append(rec)
            size += len(rec) + 1
        k += 1


def days_batch(stack: Stack, batch_id: str, limit: int) -> bytes:
    """ORES ``meter-days/v1`` meter-days (one day, many registers) up to ``limit`` bytes."""
    meters = ores_meters(stack)
    start = (datetime.fromisoformat(stack.dataset.anchor) - timedelta(days=1)).isoformat()
    head = (f'{{"format":"meter-days/v1","batch_id":"{batch_id}","source":"hes",'
            '"meter_days":[').encode()
    values = ",".join(str(i % 7) for i in range(96))
    parts: list[bytes] = []
    size, c = len(head) + 2, 0
    while True:
        for meter in meters:
            rec = (f'{{"meter":"{meter}","start":"{start}","interval":900,'
                   f'"obis":"1-0:1.8.{c}","unit":"kWh","quality":"{"01" * 96}",'
                   f'"values":[{values}]}}').encode()
            if size + len(rec) + 1 > limit:
                return head + b",".join(parts) + b"]}"
            parts.append(rec)
            size += len(rec) + 1
        c += 1


def post(port: int, ctx: ssl.SSLContext, body: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=60)
    try:
        conn.request("POST", "/push/hes/batches", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    except (BrokenPipeError, ConnectionResetError):
        # The gateway answered early and closed: read what it said.
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    gw = start_stack(tmp_path_factory.mktemp("capped"), limits=SMALL_LIMITS)
    yield gw
    gw.stop()


def assert_too_large(gw: RunningStack, status: int, headers: dict[str, str],
                     raw: bytes, batch_id: str) -> None:
    assert status == 413, raw[:300]
    assert headers["content-type"].startswith(CONTENT_TYPE)
    doc = json.loads(raw)
    assert doc["type"].endswith(":payload-too-large")
    # The limits, by name and value, so the HES knows how to split.
    assert "limits.max_push_records_mb" in doc["detail"] and "1 MiB" in doc["detail"]
    assert "limits.max_push_meter_days_mb" in doc["detail"] and "2 MiB" in doc["detail"]
    event = next(e for e in gw.audit_events() if e.get("incident") == doc["incident"])
    assert event["status"] == 413 and event["reason"] == "push-too-large"
    assert gw.stack.gateway.outbox.batch(batch_id) is None  # nothing queued


def test_the_largest_per_record_batch_is_taken_one_byte_more_is_413(
        capped: RunningStack) -> None:
    ctx = capped.context(*PUSHER)
    largest = records_batch(capped.stack, "CAP-R-1", 1 * MiB)
    assert MiB - 200 < len(largest) <= MiB
    status, _, raw = post(capped.port, ctx, largest)
    assert status == 202, raw[:300]
    assert json.loads(raw)["queued"] == json.loads(largest)["records"].__len__()
    over = records_batch(capped.stack, "CAP-R-2", MiB + 300)
    assert len(over) > MiB
    assert_too_large(capped, *post(capped.port, ctx, over), "CAP-R-2")


def test_a_columnar_batch_has_its_own_cap(capped: RunningStack) -> None:
    ctx = capped.context(*PUSHER)
    body = days_batch(capped.stack, "CAP-D-1", 2 * MiB)
    assert len(body) > MiB  # past the per-record cap, within its own
    status, _, raw = post(capped.port, ctx, body)
    assert status == 202, raw[:300]
    over = days_batch(capped.stack, "CAP-D-2", 2 * MiB + 2000)
    assert len(over) > 2 * MiB
    assert_too_large(capped, *post(capped.port, ctx, over), "CAP-D-2")


def test_a_per_record_batch_naming_the_columnar_format_is_held_to_its_cap(
        capped: RunningStack) -> None:
    ctx = capped.context(*PUSHER)
    body = records_batch(capped.stack, "CAP-R-3", MiB + 4000)
    disguised = body[:-2] + b'],"note":"meter-days/v1"}'
    assert MiB < len(disguised) < 2 * MiB
    assert_too_large(capped, *post(capped.port, ctx, disguised), "CAP-R-3")


def test_a_booking_is_held_to_the_per_record_cap(capped: RunningStack) -> None:
    conn = http.client.HTTPSConnection(HOST, capped.port, context=capped.context(
        "cmh-portal", "pusher"), timeout=30)
    try:
        body = b'{"request":"CMH-BIG","pad":"' + b"x" * (MiB + 10) + b'"}'
        conn.request("POST", "/push/cmh/requests", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        doc = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 413
    assert "limits.max_push_records_mb" in doc["detail"]


def test_a_second_large_push_gets_503_while_one_is_in_progress(
        capped: RunningStack) -> None:
    """D1: two large pushes at once would double the peak; a small one passes."""
    ctx = capped.context(*PUSHER)
    second = days_batch(capped.stack, "CAP-D-5", 3 * MiB // 2)
    assert len(second) > MiB  # a large push: it needs the slot
    with socket.create_connection((HOST, capped.port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as held:
        # The first: headers and the start of a 1.5 MiB body, then nothing.
        held.sendall(b"POST /push/hes/batches HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1500000\r\n\r\n"
                     b'{"format":"meter-days/v1","batch_id":"CAP-HELD","meter_days":[')
        gate = capped.stack.gateway.data_plane.push_gate
        deadline = time.monotonic() + 10
        while gate.in_progress == 0:  # until the gateway reads the first one's body
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, headers, raw = post(capped.port, ctx, second)
        assert status == 503, raw[:300]
        assert headers["retry-after"] and json.loads(raw)["incident"]
        event = next(e for e in capped.audit_events()
                     if e.get("incident") == json.loads(raw)["incident"])
        assert event["reason"] == "push-busy"
        # A small push (one reading) is not held up by the large one.
        small = records_batch(capped.stack, "CAP-SMALL", 2000)
        status, _, raw = post(capped.port, ctx, small)
        assert status == 202, raw[:300]
    # The first connection is gone: its slot is free again.
    deadline = time.monotonic() + 10
    while (status := post(capped.port, ctx, second)[0]) == 503 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 202


def test_readyz_is_503_while_load_is_shed_for_memory(tmp_path: Path) -> None:
    gw = start_stack(tmp_path, limits="memory_budget_mb = 1\n")  # this process is far above
    try:
        deadline = time.monotonic() + 10
        while gw.ops("/readyz").status == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = gw.ops("/readyz")
        assert ready.status == 503
        assert ready.json["status"] == "not-ready"
        assert ready.json["reason"] == "shedding load: memory"
        assert ready.json["shedding"] == "memory"
        assert all(state == "up" for state in ready.json["upstreams"].values())
    finally:
        gw.stop()


# -- a real process --------------------------------------------------------------
BUDGET_MB = 256
PUSH_MB = 8  # the default's share of the default budget, and more


def status_bytes(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def test_the_largest_push_leaves_other_tenants_served(tmp_path: Path) -> None:
    stack = RunningStack(Stack(
        tenants_dir=REPO / "tenants", certs_dir=tmp_path / "certs", work_dir=tmp_path / "work",
        run_gateway=False, limits=f"memory_budget_mb = {BUDGET_MB}\n"
                                  f"max_push_records_mb = {PUSH_MB}\n"
                                  f"max_push_meter_days_mb = {PUSH_MB}\n")).start()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config",
                             str(stack.stack.config_path)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = stack.stack.gateway_ports[0]
    pki = stack.stack.pki
    fluvius = client_context(pki.ca_cert, pki.client_cert("fluvius", "api"),
                             pki.client_key("fluvius", "api"))
    answers: list[int | str] = []
    stop = threading.Event()

    def query() -> None:
        """Fluvius: GET /hes/meters, a new connection each time (bounded)."""
        for _ in range(2000):
            if stop.is_set():
                return
            client = Client(port, fluvius)
            try:
                answers.append(client.get("/hes/meters").status)
            except (OSError, http.client.HTTPException) as exc:
                answers.append(type(exc).__name__)
            finally:
                client.close()
            time.sleep(0.02)

    querier = threading.Thread(target=query, daemon=True)
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded wait for the gateway to serve
            probe = Client(port, fluvius)
            try:
                if probe.get("/hes/meters").status == 200:
                    break
            except (OSError, http.client.HTTPException):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
            finally:
                probe.close()
        # ORES's receiver is down, as when the outage was seen: its part stays
        # queued and its delivery is retried.
        conn = http.client.HTTPSConnection(HOST, stack.stack.receivers_port,
                                           context=stack.context("ores"), timeout=10)
        conn.request("POST", "/_sim/receivers/ores/mode", body=b'{"mode": "down"}',
                     headers={CONTROL_HEADER: stack.stack.control_token,
                              "Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
        largest = records_batch(stack.stack, "MEM-LARGEST", PUSH_MB * MiB)
        assert len(largest) > PUSH_MB * MiB - 200
        querier.start()
        while len(answers) < 5:  # the other tenant is querying
            assert querier.is_alive()
            time.sleep(0.02)
        status, _, raw = post(port, stack.context(*PUSHER), largest)
        assert status == 202, raw[:300]
        assert json.loads(raw)["queued"] == largest.count(b'"meter"')
        seen = len(answers)
        while len(answers) < seen + 10:  # and goes on querying after it
            assert querier.is_alive()
            time.sleep(0.02)
        stop.set()
        querier.join(30)
        # D1: not one of the other tenant's requests was refused or cut.
        assert answers and all(a == 200 for a in answers), answers
        assert status_bytes(proc.pid, "VmHWM") <= BUDGET_MB * MiB
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        stack.stop()
