"""``gateway demo``'s banner tells the truth about the run it describes:
every port it lists is one the demo listens on and the other way round, the
paths are those of ``--certs``/``--work``, and its commands work as pasted,
from any directory."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path

from .conftest import REPO
from .test_cli import GATEWAY, Running

LISTEN = "0A"  # /proc/net/tcp state of a listening socket


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets' inodes matched
    against the kernel's socket tables)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def banner_ports(banner: str) -> set[int]:
    return {int(p) for p in re.findall(r"(?:localhost|127\.0\.0\.1):(\d+)", banner)}


def test_banner_lists_every_port_and_its_commands_work(tmp_path: Path) -> None:
    certs, work = tmp_path / "my certs", tmp_path / "work"
    proc = Running([*GATEWAY, "demo", "--ephemeral-ports", "--certs", str(certs),
                    "--work", str(work)], REPO)
    try:
        banner = proc.wait_for(r"/_sim/fault")
        # Every port the demo binds is in the banner, and nothing else.
        listening = listening_ports(proc.proc.pid)
        assert len(listening) == 8  # data, admin, ops, four simulators, receivers
        assert banner_ports(banner) == listening
        # --certs is reflected everywhere: no command points at the default.
        assert "certs/dev" not in banner
        assert str(certs / "ca.pem") in banner
        # A national register number to look up: an ORES employee's.
        nrn = re.search(r"national register number .*: (\d{11})", banner)
        assert nrn is not None
        persons = json.loads((work / "dataset.json").read_text())["persons"]
        assert {p["nrn"]: p["employer"] for p in persons}[nrn.group(1)] == "ores"
        # The admin CLI as the banner sets it up works from any directory.
        export = re.search(r"export GATEWAY_ADMIN_URL=.*?(?=\n\n)", banner, re.S)
        assert export is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_ADMIN_")}
        keys = subprocess.run(
            ["bash", "-c", f"{export.group(0)}\n{shlex.join(GATEWAY)} keys list"],
            cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, text=True,
            capture_output=True, timeout=60)
        assert keys.returncode == 0, keys.stderr
        assert "kid" in keys.stdout
        # The demo runs the isolation canary prober: a clean first round, and
        # the banner's command to watch it.
        ops = re.search(r"ops plane +http://127\.0\.0\.1:(\d+)", banner)
        assert ops is not None and "grep ^gateway_canary_" in banner
        assert clean_canary_round(int(ops.group(1)))
        audit = (work / "audit.jsonl").read_text()
        assert '"canary":true' in audit and '"principal":"canary"' in audit
    except BaseException:
        proc.stop()
        raise
    assert proc.stop() == 0


def clean_canary_round(ops_port: int, timeout_s: float = 90) -> bool:
    """Whether the demo's prober finishes a round in which every probe passed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        found = re.search(r"^gateway_canary_last_success_timestamp_seconds (\S+)$", text, re.M)
        if found is not None and float(found.group(1)) > 0:
            return '\ngateway_canary_probes_total{result="pass"} 0.0' not in text
        time.sleep(0.5)
    return False
