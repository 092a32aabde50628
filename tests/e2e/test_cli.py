"""The command line as a person uses it: ``gateway demo`` prints ready-to-
paste commands that behave as described; ``gateway serve`` runs from a config
file and stops cleanly; configuration errors name file and key."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.errors import ConfigError

from .conftest import REPO

GATEWAY = [sys.executable, "-m", "gateway"]


class Running:
    """A ``gateway`` subprocess whose output is collected by a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = "".join(self.lines)
            if re.search(pattern, seen):
                return seen
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen; output:\n{''.join(self.lines)}")

    def stop(self) -> int:
        """Ctrl-C, as a person would; returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self._pump.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


def test_demo_prints_commands_that_work(tmp_path: Path) -> None:
    proc = Running([*GATEWAY, "demo", "--ephemeral-ports", "--certs", str(tmp_path / "certs"),
                    "--work", str(tmp_path / "work")], REPO)
    try:
        banner = proc.wait_for(r"grep \^gateway_")
        assert str(tmp_path / "certs" / "ca.pem") in banner
        curls = [line.strip() for line in banner.splitlines()
                 if line.strip().startswith("curl --cacert")]
        assert len(curls) == 3
        outputs = [subprocess.run([*shlex.split(c), "-s", "-w", "\n%{http_code}"], text=True,
                                  capture_output=True, check=True, timeout=20).stdout
                   for c in curls]
        bodies = [(json.loads(o.rsplit("\n", 1)[0]), o.rsplit("\n", 1)[1]) for o in outputs]
        (own, own_status), (foreign, foreign_status), (listing, list_status) = bodies
        assert own_status == "200" and own["serial"]
        assert foreign_status == "403" and foreign["incident"] and foreign["status"] == 403
        assert list_status == "200" and listing["meters"]
        ops = re.search(r"curl -s (http://127\.0\.0\.1:\d+/metrics)", banner)
        assert ops is not None
        metrics = subprocess.run(["curl", "-s", ops.group(1)], text=True, capture_output=True,
                                 check=True, timeout=20).stdout
        assert 'gateway_requests_total{route="/hes/meters/{serial}",status="403",tenant="ores"' \
            in metrics
    except BaseException:
        proc.stop()
        raise
    assert proc.stop() == 0  # Ctrl-C stops the demo cleanly


def test_serve_runs_from_the_written_config(tmp_path: Path) -> None:
    from gateway.demo._devpki import ensure_dev_pki
    from gateway.demo._stack import write_config
    from gateway.tenants import load_tenants

    reg = load_tenants(REPO / "tenants")
    pki = ensure_dev_pki(tmp_path / "certs", reg, "shared-grid.test")
    relations = tmp_path / "relations.json"
    relations.write_text('{"relations": []}')
    from gateway.demo import spare_port
    ops_port = spare_port()
    from gateway.files import write_private
    from gateway.vault import MasterKeys

    write_private(tmp_path / "data" / "vault.key", MasterKeys.generate().to_text().encode())
    config = tmp_path / "gateway.toml"
    write_config(config, pki=pki, tenants_dir=REPO / "tenants", relations=relations,
                 data_dir=tmp_path / "data", data_port=0, ops_port=ops_port, admin_port=0,
                 sim_ports={"hes": 1, "clearing": 1, "cmh": 1, "itsm": 1})
    proc = Running([*GATEWAY, "serve", "--config", str(config)], tmp_path)
    try:
        proc.wait_for(r"data plane on")
        out = subprocess.run(["curl", "-s", "-w", "%{http_code}",
                              f"http://127.0.0.1:{ops_port}/readyz"], capture_output=True,
                             text=True, check=True, timeout=10).stdout
        # No upstream is reachable: the body says so, but the replica itself
        # can serve (each request to a down upstream fails on its own).
        body, status = out[:-3], out[-3:]
        assert status == "200"
        ready = json.loads(body)
        assert set(ready["upstreams"].values()) == {"down"}
        assert (ready["role"], ready["leader"]) == ("all", True)
    except BaseException:
        proc.stop()
        raise
    assert proc.stop() == 0


def test_config_errors_name_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\ntrust_domain = "x"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: upstreams: is required"):
        GatewayConfig.from_toml(bad)
    proc = subprocess.run([*GATEWAY, "serve", "--config", str(tmp_path / "missing.toml")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "missing.toml: config file not found" in proc.stderr


def test_example_config_is_valid() -> None:
    cfg = GatewayConfig.from_toml(REPO / "deploy" / "gateway.example.toml")
    assert cfg.data.port == 8443 and cfg.ops.host == "127.0.0.1"
    assert set(cfg.upstreams) == {"hes", "clearing", "cmh", "itsm"}
    assert cfg.tenants_dir.resolve() == (REPO / "tenants").resolve()


def test_ops_plane_stays_on_loopback(tmp_path: Path) -> None:
    text = (REPO / "deploy" / "gateway.example.toml").read_text()
    cfg = tmp_path / "deploy" / "gateway.toml"
    cfg.parent.mkdir()
    cfg.write_text(text.replace('[listeners.ops]                          # plain HTTP: keep it '
                                'on loopback\nhost = "127.0.0.1"',
                                '[listeners.ops]\nhost = "0.0.0.0"'))
    with pytest.raises(ConfigError, match="not a loopback address"):
        GatewayConfig.from_toml(cfg)


def test_serve_moves_start_up_state_out_of_the_collector() -> None:
    import gc

    from gateway.cli import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == 50_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_event_loop_is_chosen_in_the_config(tmp_path: Path) -> None:
    import asyncio

    import uvloop

    from gateway.cli import loop_factory

    text = (REPO / "deploy" / "gateway.example.toml").read_text()
    assert GatewayConfig.from_toml(REPO / "deploy" / "gateway.example.toml").event_loop == "auto"
    cfg = tmp_path / "deploy" / "gateway.toml"
    cfg.parent.mkdir()
    for choice in ("uvloop", "asyncio"):
        cfg.write_text(text.replace('event_loop = "auto"', f'event_loop = "{choice}"'))
        assert GatewayConfig.from_toml(cfg).event_loop == choice
    cfg.write_text(text.replace('event_loop = "auto"', 'event_loop = "trio"'))
    with pytest.raises(ConfigError, match=r"gateway\.event_loop: must be one of"):
        GatewayConfig.from_toml(cfg)
    # auto: uvloop, a dependency of the gateway; asyncio only when asked for.
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is asyncio.new_event_loop


def test_the_data_listeners_http_server_is_chosen_in_the_config(tmp_path: Path) -> None:
    from gateway.config import DEFAULT_HTTP_SERVER

    example = REPO / "deploy" / "gateway.example.toml"
    text = example.read_text()
    line = f'http_server = "{DEFAULT_HTTP_SERVER}"'
    assert line in text and GatewayConfig.from_toml(example).http_server == DEFAULT_HTTP_SERVER
    cfg = tmp_path / "deploy" / "gateway.toml"
    cfg.parent.mkdir()
    for choice in ("lean", "aiohttp"):
        cfg.write_text(text.replace(line, f'http_server = "{choice}"'))
        assert GatewayConfig.from_toml(cfg).http_server == choice
    cfg.write_text(text.replace(line, ""))
    assert GatewayConfig.from_toml(cfg).http_server == DEFAULT_HTTP_SERVER
    cfg.write_text(text.replace(line, 'http_server = "h2o"'))
    with pytest.raises(ConfigError, match=r"gateway\.http_server: must be one of lean, aiohttp"):
        GatewayConfig.from_toml(cfg)


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import sys

    from gateway.cli import loop_factory

    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    assert loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loop_factory("uvloop")


def _held_port() -> tuple[socket.socket, int]:
    """A port some other program listens on."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


def _serve_config(tmp_path: Path, *, data_port: int, ops_port: int, admin_port: int) -> Path:
    from gateway.demo._devpki import ensure_dev_pki
    from gateway.demo._stack import write_config
    from gateway.files import write_private
    from gateway.tenants import load_tenants
    from gateway.vault import MasterKeys

    pki = ensure_dev_pki(tmp_path / "certs", load_tenants(REPO / "tenants"), "shared-grid.test")
    relations = tmp_path / "relations.json"
    relations.write_text('{"relations": []}')
    write_private(tmp_path / "data" / "vault.key", MasterKeys.generate().to_text().encode())
    config = tmp_path / "gateway.toml"
    write_config(config, pki=pki, tenants_dir=REPO / "tenants", relations=relations,
                 data_dir=tmp_path / "data", data_port=data_port, ops_port=ops_port,
                 admin_port=admin_port, sim_ports={"hes": 1, "clearing": 1, "cmh": 1, "itsm": 1})
    return config


@pytest.mark.parametrize("listener", ["data", "ops", "admin"])
def test_serve_names_a_busy_port_in_one_line(tmp_path: Path, listener: str) -> None:
    holder, busy = _held_port()
    with holder:
        ports = {"data_port": 0, "ops_port": 0, "admin_port": 0, f"{listener}_port": busy}
        config = _serve_config(tmp_path, **ports)
        proc = subprocess.run([*GATEWAY, "serve", "--config", str(config)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gateway:")]
    assert errors == [f"gateway: {listener} plane: cannot listen on 127.0.0.1:{busy}: "
                      "address in use"], proc.stderr
    assert "ephemeral" not in proc.stderr  # a hint for the demo only


def test_demo_names_a_busy_port_and_the_way_around_it(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """The demo's fixed ports, as if another program held one (the suite never
    binds the real ones: a running demo must not break it)."""
    from gateway import cli
    from gateway.demo import StackPorts

    holder, busy = _held_port()
    with holder:
        ports = StackPorts(simulators={"hes": 0, "clearing": 0, "cmh": busy, "itsm": 0})
        monkeypatch.setattr(StackPorts, "demo", classmethod(lambda cls: ports))
        code = cli.main(["demo", "--tenants", str(REPO / "tenants"),
                         "--certs", str(tmp_path / "certs"), "--work", str(tmp_path / "work")])
    assert code == 2
    err = capsys.readouterr().err
    assert err == (f"gateway: cmh simulator: cannot listen on 127.0.0.1:{busy}: address in use "
                   "(another demo running? try --ephemeral-ports)\n")


def test_a_busy_port_leaves_no_listener_of_the_demo_open(tmp_path: Path) -> None:
    """Every other port bound before it is closed again: nothing half-started."""
    import asyncio

    from gateway.demo import Stack, StackPorts
    from gateway.errors import ListenerUnavailable

    holder, busy = _held_port()
    with holder:
        free = _held_port()
        free[0].close()
        stack = Stack(tenants_dir=REPO / "tenants", certs_dir=tmp_path / "certs",
                      work_dir=tmp_path / "work",
                      ports=StackPorts(data=free[1], receivers=busy))
        with pytest.raises(ListenerUnavailable, match=f"push receivers: cannot listen on "
                           f"127.0.0.1:{busy}: address in use"):
            asyncio.run(stack.start())
    # The data plane's port was bound first and is free again.
    with socket.socket() as again:
        again.bind(("127.0.0.1", free[1]))


def test_version_prints_the_installed_version_and_exits_0() -> None:
    import importlib.metadata

    proc = subprocess.run([*GATEWAY, "--version"], capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"gateway {importlib.metadata.version('shared-grid-gateway')}\n"
