"""Security events reach the SOC (D12): JSON lines and RFC
5424 syslog over UDP on loopback, each carrying the incident id of the audit
event."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

from .conftest import start_stack


def _collect(sock: socket.socket, until: Any, timeout: float = 10) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline and not until(got):
        with contextlib.suppress(TimeoutError):
            got.append(sock.recv(65536))
    return got


def test_security_events_as_json_lines_and_syslog(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        port = collector.getsockname()[1]
        gw = start_stack(tmp_path, soc_syslog=f"udp://127.0.0.1:{port}")
        try:
            gw.fault("hes", "misroute")
            problem = gw.client("ores").get("/hes/meters").json
            gw.fault("hes", "none")
            # Repeated denials from one principal (default threshold: 20 a minute).
            meter = next(m["serial"] for m in gw.stack.dataset.meters
                         if m["owners"][-1]["tenant"] == "fluvius")
            for _ in range(20):
                assert gw.client("lumen-energie").get(f"/hes/meters/{meter}").status == 403
            messages = _collect(collector, lambda got: sum(
                b"repeated-denials" in m or b"isolation-violation" in m for m in got) >= 2)
        finally:
            gw.stop()
    soc = [json.loads(line) for line in (tmp_path / "work" / "soc.jsonl").read_text()
           .splitlines()]
    violation = next(e for e in soc if e["kind"] == "isolation-violation")
    assert violation["severity"] == "critical" and violation["incident"] == problem["incident"]
    assert violation["tenant"] == "ores"
    assert any(e["kind"] == "repeated-denials" and e["tenant"] == "lumen-energie" for e in soc)
    # The same events as RFC 5424 syslog: <PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG
    line = next(m for m in messages if b"isolation-violation" in m).decode("utf-8")
    match = re.match(r"<(\d+)>1 \S+Z \S+ shared-grid-gateway \d+ isolation-violation "
                     r"\[gateway@32473 incident=\"([^\"]+)\"", line)
    assert match is not None, line
    assert int(match.group(1)) == 10 * 8 + 2  # authpriv.crit
    assert match.group(2) == problem["incident"]
