"""The access log (``[log] access = true``) and JSON logs (``[log] format =
"json"``) over real sockets: one line per data-plane request, with its
incident id and nothing that names a resource, a query or a payload; off by
default; JSON on stdout, one object per line."""

from __future__ import annotations

import http.client
import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.demo._stack import Stack
from gateway.logs import ACCESS_FIELDS, TextFormatter, fields, json_formatter

from .conftest import REPO, Client, RunningStack, start_stack

LEAK = "Zq7LeakCheck"  # in paths and queries: must never reach an access line


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("access"),
                          extra_config="[log]\naccess = true\n")
    yield running
    running.stop()


def _meter(gw: RunningStack, tenant: str) -> str:
    return next(m["serial"] for m in gw.stack.dataset.meters
                if m["owners"][-1]["tenant"] == tenant and not m["airplane_mode"])


def _access(caplog: pytest.LogCaptureFixture) -> dict[str, logging.LogRecord]:
    return {r.incident: r for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "gateway.access"}


def test_one_line_per_request_with_its_incident_and_no_resource_id(
        logged: RunningStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    own, foreign = _meter(logged, "ores"), _meter(logged, "fluvius")
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    client, field_ops = logged.client("ores"), logged.client("ores", "field-ops")
    asked = [
        ("GET", f"/hes/meters/{own}/readings?date={yesterday}&x={LEAK}", None),
        ("GET", f"/hes/meters/{foreign}", None),  # 403: no relation
        ("GET", f"/hes/{LEAK}/meters?serial={LEAK}", None),  # no route
        ("POST", f"/hes/meters/{own}/operations", {"operation": LEAK}),  # a body read
    ]
    answers = [(field_ops if body else client).request(method, path, body)
               for method, path, body in asked]
    lines = _access(caplog)
    assert len(lines) == len(asked)
    templates = {r.template for r in logged.stack.gateway.data_plane.routes.routes} | {"none"}
    for (method, _, _), answer in zip(asked, answers, strict=True):
        record = lines[answer.headers["x-request-id"]]
        line = fields(record)
        assert tuple(line) == ACCESS_FIELDS
        assert line["status"] == answer.status and line["tenant"] == "ores"
        assert line["method"] == method and line["route"] in templates
        assert line["bytes_out"] == len(answer.body)
        for shown in (TextFormatter().format(record), json_formatter().format(record)):
            for secret in (own, foreign, LEAK, yesterday):
                assert secret not in shown, (secret, shown)
    first = fields(lines[answers[0].headers["x-request-id"]])
    assert (first["route"], first["status"], first["upstream"]) == (
        "/hes/meters/{serial}/readings", 200, "hes")
    assert first["bytes_out"] > 0 and first["duration_ms"] > 0
    denied = fields(lines[answers[1].headers["x-request-id"]])
    assert (denied["route"], denied["status"], denied["reason"]) == (
        "/hes/meters/{serial}", 403, "no-relation")
    assert fields(lines[answers[2].headers["x-request-id"]])["route"] == "none"
    posted = fields(lines[answers[3].headers["x-request-id"]])
    assert posted["bytes_in"] > 0 and posted["method"] == "POST"


def test_a_method_outside_the_known_ones_is_not_written(
        logged: RunningStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    answer = logged.client("ores").request(f"{LEAK.upper()}", "/hes/meters")
    (record,) = _access(caplog).values()
    assert fields(record)["method"] == "other" and fields(record)["status"] == answer.status
    assert LEAK.upper() not in TextFormatter().format(record)


def test_the_access_log_is_off_by_default(gw: RunningStack,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    assert gw.client("ores").get("/hes/meters").status == 200
    assert gw.stack.gateway.config.log.access is False
    assert _access(caplog) == {}


def test_serve_logs_json_on_stdout(tmp_path: Path) -> None:
    stack = RunningStack(Stack(tenants_dir=REPO / "tenants", certs_dir=tmp_path / "certs",
                               work_dir=tmp_path / "work", run_gateway=False)).start()
    config = stack.stack.config_path
    config.write_text(config.read_text() + '\n[log]\nformat = "json"\naccess = true\n')
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config",
                                 str(config)], cwd=tmp_path, stdout=stdout, stderr=stderr)
    meter = _meter(stack, "ores")
    try:
        deadline = time.monotonic() + 30
        answer = None
        while answer is None:  # bounded wait for the gateway
            probe = Client(stack.stack.gateway_ports[0], stack.context("ores"))
            try:
                answer = probe.get(f"/hes/meters/{meter}")
            except (OSError, http.client.HTTPException):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
            finally:
                probe.close()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        stack.stop()
    assert code == 0 and answer.status == 200
    docs = [json.loads(line) for line in out.read_text().splitlines()]  # every line JSON
    assert any("data plane on" in d["message"] for d in docs)
    (access,) = [d for d in docs if d["logger"] == "gateway.access"]
    assert access["incident"] == answer.headers["x-request-id"]
    assert (access["route"], access["status"]) == ("/hes/meters/{serial}", 200)
    assert meter not in out.read_text()
    # Nothing of the log went to stderr as text.
    assert not re.search(r" (INFO|WARNING|ERROR) gateway", err.read_text()), err.read_text()


def test_a_withheld_answer_is_logged_with_its_incident(
        faults: RunningStack, caplog: pytest.LogCaptureFixture) -> None:
    """A log record that concerns a request carries that request's incident
    id: the one in the problem document and in the audit event."""
    caplog.set_level(logging.WARNING, logger="gateway.dataplane")
    faults.fault("hes", "misroute")
    answer = faults.client("ores").get("/hes/meters")
    assert answer.status == 502
    incident = answer.json["incident"]
    (record,) = [r for r in caplog.records if r.getMessage() == "isolation violation withheld"]
    assert fields(record) == {"incident": incident, "tenant": "ores",
                              "route": "/hes/meters", "reason": fields(record)["reason"]}
    assert any(e.get("incident") == incident for e in faults.audit_events())
    assert f"incident={incident} tenant=ores" in TextFormatter().format(record)
