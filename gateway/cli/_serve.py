"""``gateway serve``: one process, or ``--workers N`` supervised."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from gateway.cli._run import run_until_signal
from gateway.errors import ConfigError
from gateway.logs import configure as configure_logging


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig
    from gateway.server import Gateway

    config = GatewayConfig.from_toml(Path(args.config), os.environ)
    configure_logging(config.log.format, verbose=args.verbose)  # [log] format
    if args.worker_index is not None:
        config = config.for_worker(args.worker_index)
    elif args.workers != 1:
        return _supervise_workers(config, Path(args.config), args.workers)
    gw = Gateway(config, reuse_port=args.worker_index is not None)
    run_until_signal(gw.start, gw.stop, gw.reload_async, config.event_loop)
    return 0


RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
FIRST_WORKER_READY_S = 120.0


def _wait_ready(config: object, proc: object) -> None:
    """Until the worker's ops plane says ready (or it exits, or the bound)."""
    import subprocess
    import time
    import urllib.error
    import urllib.request

    from gateway.config import GatewayConfig

    assert isinstance(config, GatewayConfig) and isinstance(proc, subprocess.Popen)
    url = f"http://{config.ops.host}:{config.ops.port}/readyz"
    deadline = time.monotonic() + FIRST_WORKER_READY_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)


def _supervise_workers(config: object, path: Path, workers: int) -> int:
    """``serve --workers N``: N processes on the same data port (SO_REUSEPORT),
    each a replica of the fleet with its own id, ops port and files. A worker
    that dies is started again (with a growing pause if it keeps dying);
    SIGTERM, SIGINT and SIGHUP are passed on to every worker; the supervisor
    exits when they have all stopped, 0 if each did so cleanly, 2 if one
    refused its configuration or could not bind a port (it printed why)."""
    import subprocess
    import time

    from gateway.config import GatewayConfig

    assert isinstance(config, GatewayConfig)
    if not config.shared_state:
        raise ConfigError(f"{config.source}: --workers {workers}: workers are replicas of a "
                          "fleet and share their state: set [state] url = \"postgresql://...\"")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: at least 1")
    if config.fleet.role == "control":
        raise ConfigError(f"{config.source}: --workers {workers}: the control plane runs as "
                          "one process per instance (run a second instance as its standby)")
    log = logging.getLogger("gateway.server")

    def spawn(index: int) -> subprocess.Popen[bytes]:
        # Our own interpreter and module, the operator's config path.
        return subprocess.Popen([sys.executable, "-m", "gateway", "serve",  # noqa: S603
                                 "--config", str(path), "--worker-index", str(index)])

    procs = {0: spawn(0)}
    if config.fleet.role != "data" and config.ops.port:
        # Worker 0 makes what the data-plane workers only read (the vault's
        # data keys, the CRLs): they start once it is ready (one that starts
        # too early exits 75 and is started again).
        _wait_ready(config.for_worker(0), procs[0])
    procs.update({i: spawn(i) for i in range(1, workers)})
    deaths = dict.fromkeys(procs, 0)
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("supervising %d workers: pids %s", workers, [p.pid for p in procs.values()])
    codes: dict[int, int] = {}
    while len(codes) < workers:
        time.sleep(0.2)
        for index, proc in procs.items():
            if index in codes or proc.poll() is None:
                continue
            if stopping:
                codes[index] = proc.returncode
                continue
            if proc.returncode == 2:  # a configuration error: starting again cannot help
                log.error("worker %d refused its configuration; stopping the others", index)
                forward(signal.SIGTERM, None)
                codes[index] = 2
                continue
            pause = RESTART_BACKOFF_S[min(deaths[index], len(RESTART_BACKOFF_S) - 1)]
            deaths[index] += 1
            log.error("worker %d (pid %d) exited with %s; starting it again in %.1f s",
                      index, proc.pid, proc.returncode, pause)
            time.sleep(pause)
            if not stopping:
                procs[index] = spawn(index)
    if 2 in codes.values():  # a configuration or a busy port: the worker said which
        return 2
    return 0 if all(code == 0 for code in codes.values()) else 1
