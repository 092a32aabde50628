"""The ``gateway`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, ListenerUnavailable, NotReadyYet
from gateway.logs import configure as configure_logging


def _tune_gc() -> None:
    """Long-lived state (tenants, the relation index, TLS contexts) is built at
    start-up: move it out of the collector's sight and collect the young
    generation less often. The default thresholds cost ~11 % of CPU and most
    of the p99 tail under load (bench/README.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop ``[gateway] event_loop`` asks for: uvloop (a dependency
    of the gateway, and the default when installed: its TLS record layer and
    transports are C, not Python) or asyncio's own."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop  # optional: not every platform has a wheel
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("gateway.event_loop = \"uvloop\" but uvloop is not "
                              "installed (pip install uvloop)") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _run_until_signal(start: object, stop: object,
                      reload: Callable[[], Awaitable[None]] | None = None,
                      event_loop: str = "auto") -> None:
    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        reloading: set[asyncio.Task[None]] = set()  # a reference until each one is done
        if reload is not None:
            def on_hup() -> None:
                task = loop.create_task(_safe_reload(reload))
                reloading.add(task)
                task.add_done_callback(reloading.discard)

            loop.add_signal_handler(signal.SIGHUP, on_hup)
        await start()  # type: ignore[operator]
        _tune_gc()
        try:
            await done.wait()
        finally:
            await stop()  # type: ignore[operator]

    factory = loop_factory(event_loop)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


async def _safe_reload(reload: Callable[[], Awaitable[None]]) -> None:
    try:
        await reload()
        _tune_gc()  # the new snapshot is long-lived too
    except ConfigError as exc:
        logging.getLogger("gateway").error("reload refused, keeping the running config: %s",
                                           exc)


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
    _run_until_signal(gw.start, gw.stop, gw.reload_async, config.event_loop)
    return 0


RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
FIRST_WORKER_READY_S = 120.0
# The demo runs the isolation canary prober this often (README: Isolation canaries).
DEMO_CANARY_S = 30.0


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


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import Stack, StackPorts, demo_banner

    if args.replicas is not None:
        return _demo_fleet(args)

    stack = Stack(tenants_dir=Path(args.tenants), certs_dir=Path(args.certs),
                  work_dir=Path(args.work), history=True, canary_interval_s=DEMO_CANARY_S,
                  lockbox=True,
                  ports=StackPorts() if args.ephemeral_ports else StackPorts.demo())

    async def start() -> None:
        await stack.start()
        print(demo_banner(stack), flush=True)

    with _demo_ports_hint(args):
        _run_until_signal(start, stack.stop, lambda: stack.gateway.reload_async())
    return 0


@contextlib.contextmanager
def _demo_ports_hint(args: argparse.Namespace) -> Iterator[None]:
    """A busy demo port is most often another demo: say how to run beside it."""
    try:
        yield
    except ListenerUnavailable as exc:
        if args.ephemeral_ports:
            raise
        raise ListenerUnavailable(f"{exc} (another demo running? try --ephemeral-ports)"
                                  ) from exc


def _demo_fleet(args: argparse.Namespace) -> int:
    """``gateway demo --replicas N``: the fleet on a local PostgreSQL."""
    from gateway.demo import Fleet, StackPorts, fleet_banner

    if args.replicas < 1:
        raise ConfigError(f"--replicas {args.replicas}: at least 1")
    fleet = Fleet(tenants_dir=Path(args.tenants), certs_dir=Path(args.certs),
                  work_dir=Path(args.work), replicas=args.replicas,
                  ports=StackPorts() if args.ephemeral_ports else StackPorts.demo())

    async def start() -> None:
        try:
            await fleet.start()
        except BaseException:
            await fleet.stop()
            raise
        print(json.dumps(fleet.description(), indent=1), flush=True)
        print(fleet_banner(fleet), flush=True)

    with _demo_ports_hint(args):
        _run_until_signal(start, fleet.stop)
    return 0


def cmd_certs_init_dev(args: argparse.Namespace) -> int:
    from gateway.demo import TRUST_DOMAIN, ensure_dev_pki
    from gateway.tenants import load_tenants

    pki = ensure_dev_pki(Path(args.out), load_tenants(Path(args.tenants)), TRUST_DOMAIN)
    print(f"dev PKI in {pki.root}: trust bundle {pki.ca_cert}")
    return 0


DEMO_AUDIT_LOG = "var/demo/audit.jsonl"
DEMO_AUDIT_KEY_DIR = "var/demo/audit-key"


def cmd_audit_verify(args: argparse.Namespace) -> int:
    import json

    from gateway.audit import public_keys, published_keys, segment_files, segments_dir, verify_log
    from gateway.console import progress

    if args.fleet:
        return _verify_fleet(args)
    from gateway.admin import demo_work_tree

    # The demo's files are the default only where the demo ran.
    demo = demo_work_tree()
    args.log = args.log or (DEMO_AUDIT_LOG if demo else None)
    if not args.keys:
        args.key_dir = args.key_dir or (DEMO_AUDIT_KEY_DIR if demo else None)
    missing = [what for what, given in (("--log FILE", args.log),
                                        ("--keys FILE or --key-dir DIR",
                                         args.keys or args.key_dir)) if not given]
    if missing:
        print(f"gateway: audit verify needs {' and '.join(missing)} (the demo's files are "
              "the default only in a demo work tree)", file=sys.stderr)
        return 2
    # A verifier only reads: it never creates or changes a key (audit format §6).
    try:
        if args.keys:
            keys = json.loads(Path(args.keys).read_text(encoding="utf-8"))
            if not isinstance(keys, dict):
                raise ValueError("expected a JSON object {\"keys\": [...]}")
            public_keys(keys)  # every kid must match its key
        else:
            key_dir = Path(args.key_dir).resolve()
            if any(part.endswith(".segments") for part in key_dir.parts):
                raise ValueError(f"{key_dir} is inside an audit segments directory, "
                                 "not a key directory")
            keys = published_keys(key_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        source = args.keys or args.key_dir
        print(f"gateway: cannot read the audit keys from {source}: {exc}", file=sys.stderr)
        return 2
    log_path = Path(args.log)
    if log_path.is_dir():
        print(f"gateway: --log {log_path} is a directory; name the active log file "
              "(e.g. audit.jsonl beside audit.segments/)", file=sys.stderr)
        return 2
    if log_path.parent.name.endswith(".segments"):
        print(f"gateway: --log {log_path} is a sealed segment; name the active log "
              f"(e.g. {log_path.parent.parent / 'audit.jsonl'}): the whole log, every "
              "segment included, is verified from it", file=sys.stderr)
        return 2
    try:
        files = segment_files(segments_dir(log_path))
        if not log_path.exists() and not files:
            print(f"gateway: no audit log at {log_path}", file=sys.stderr)
            return 2
        files += [log_path] if log_path.exists() else []
        # A bar on a terminal (bytes of every segment); nothing when piped.
        with progress(sum(f.stat().st_size for f in files), "verifying the audit log",
                      unit="B", scale=True) as bar:
            result = verify_log(log_path, keys, lambda f: bar.advance(f.stat().st_size))
    except OSError as exc:  # unreadable file or directory: not a verdict on the log
        print(f"gateway: cannot read the audit log {log_path}: {exc}", file=sys.stderr)
        return 2
    summary = {"ok": result.ok, "events": result.events, "checkpoints": result.checkpoints,
               "files": result.files, "first_seq": result.first_seq,
               "last_seq": result.last_seq, "first_bad_file": None if result.ok else result.file,
               "first_bad_line": result.first_bad_line, "first_bad_seq": result.first_bad_seq,
               "problem": result.problem, "warning": result.warning}
    print(json.dumps(summary, indent=1))
    return 0 if result.ok else 1


def _verify_fleet(args: argparse.Namespace) -> int:
    """``gateway audit verify --fleet URL``: every replica's shipped chain and
    the fleet checkpoints (audit format §13)."""
    import json

    import psycopg

    from gateway.audit import public_keys, published_fleet_keys, verify_fleet
    from gateway.state import AuditTables

    try:
        tables = AuditTables(args.fleet)
    except psycopg.Error as exc:
        print(f"gateway: cannot read the fleet's audit tables: {exc}", file=sys.stderr)
        return 2
    try:
        if args.keys:
            keys = json.loads(Path(args.keys).read_text(encoding="utf-8"))
            source = args.keys
        else:
            # Keys from the same database are no independent check: say so.
            keys, source = published_fleet_keys(tables), "database"
        public_keys(keys)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"gateway: cannot read the audit keys: {exc}", file=sys.stderr)
        tables.close()
        return 2
    try:
        result = verify_fleet(tables, keys)
    except psycopg.Error as exc:
        print(f"gateway: cannot read the fleet's audit tables: {exc}", file=sys.stderr)
        return 2
    finally:
        tables.close()
    summary = result.summary()
    summary["keys"] = source
    if source == "database":
        summary["warning"] = ("the public keys were read from the database being verified; "
                              "pass --keys with a copy kept elsewhere for an independent check")
    print(json.dumps(summary, indent=1))
    return 0 if result.ok else 1


def cmd_state_grants(args: argparse.Namespace) -> int:
    from gateway.state import data_plane_grants

    try:
        print(data_plane_grants(args.role), end="")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return 0


def _state_location(config: Path) -> tuple[str | None, Path]:
    """Where ``gateway serve --config`` keeps its state: ``[state] url`` and data_dir."""
    from gateway.config import GatewayConfig

    loaded = GatewayConfig.from_toml(config)
    return loaded.state_url, loaded.data_dir


def cmd_relations_compile(args: argparse.Namespace) -> int:
    from gateway.console import progress
    from gateway.files import compile_feed

    # A bar on a terminal (10 M relations take ~25 s); nothing when piped.
    with progress(None, "indexing relations", unit=" relations", scale=True) as bar:
        try:
            count = compile_feed(Path(args.feed), Path(args.out), bar.reached)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{args.feed}: cannot compile the relation feed: {exc}") from exc
        bar.reached(count, count)  # a snapshot as input reports no steps of its own
    print(f"{count} relations -> {args.out} ({Path(args.out).stat().st_size} bytes)")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """``gateway config check``: what ``serve`` would refuse in the config file
    (with the environment's GATEWAY_<TABLE>__<KEY> overrides) and in the
    tenant files it names, without starting anything: exit 0 or 2."""
    from gateway.config import GatewayConfig
    from gateway.tenants import check_reach, load_tenants

    config = GatewayConfig.from_toml(Path(args.config), os.environ)
    registry = load_tenants(config.tenants_dir)
    check_reach(config.lockbox.reach, registry, str(config.source))
    print(f"{args.config}: valid ({len(registry)} tenant files in {config.tenants_dir})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from gateway.metrics import version
    parser.add_argument("--version", action="version", version=f"gateway {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway from a config file")
    serve.add_argument("--config", required=True, help="path to gateway TOML config")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="N data-plane worker processes on the same sockets (SO_REUSEPORT), "
                       "each a replica of the fleet; needs [state] url = postgresql://...")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="the configuration file")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check", help="validate a config file and the tenant files it names without "
        "starting (exit 0 valid, 2 not; docs/configuration.md lists every key)")
    check.add_argument("--config", required=True, help="path to gateway TOML config")
    check.set_defaults(func=cmd_config_check)

    demo = sub.add_parser("demo", help="dev PKI + four simulators + gateway on loopback")
    demo.add_argument("--tenants", default="tenants", help="tenant declarations directory")
    demo.add_argument("--certs", default="certs/dev", help="where the dev PKI is written")
    demo.add_argument("--work", default="var/demo", help="dataset, keys, audit log")
    demo.add_argument("--replicas", type=int, metavar="N",
                      help="run the gateway as a fleet: a local PostgreSQL under --work, one "
                      "control plane and N data-plane replicas, each its own process "
                      "(described in <work>/fleet.json)")
    demo.add_argument("--ephemeral-ports", action="store_true",
                      help="let the kernel pick every port (for tests beside a running demo)")
    demo.set_defaults(func=cmd_demo)

    certs = sub.add_parser("certs", help="certificate tasks")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init-dev", help="create or refresh the dev PKI")
    init.add_argument("--tenants", default="tenants")
    init.add_argument("--out", default="certs/dev")
    init.set_defaults(func=cmd_certs_init_dev)
    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check the hash chain and every checkpoint, across the sealed "
        "segments (<log>.segments/) and the active file")
    verify.add_argument("--log", help="the active log file (in a demo work tree, default "
                        f"{DEMO_AUDIT_LOG})")
    verify.add_argument("--keys", help="public keys (JSON, as served on the ops plane at "
                        "/.well-known/audit-keys.json)")
    verify.add_argument("--key-dir", help="or the gateway's audit key directory (in a demo "
                        f"work tree, default {DEMO_AUDIT_KEY_DIR})")
    verify.add_argument("--fleet", metavar="POSTGRESQL_URL",
                        help="verify a fleet: every replica's chain shipped to this database "
                        "and the fleet checkpoints (names a truncated or missing replica)")
    verify.set_defaults(func=cmd_audit_verify)
    from gateway.admin import add_audit_parsers
    add_audit_parsers(audit_sub)
    state = sub.add_parser("state", help="the gateway's state: backup and restore of the "
                           "SQLite file, the PostgreSQL data-plane grants")
    state_sub = state.add_subparsers(dest="state_command", required=True)
    grants = state_sub.add_parser(
        "data-plane-grants", help="print the SQL that gives an existing database role the "
        "data-plane replicas' privileges, no more (run it as the schema's owner after the "
        "control plane's first start)")
    grants.add_argument("--role", default="gateway_data")
    grants.set_defaults(func=cmd_state_grants)
    from gateway.state import add_backup_parsers
    add_backup_parsers(state_sub, _state_location)
    relations = sub.add_parser("relations", help="the relation feed")
    relations_sub = relations.add_subparsers(dest="relations_command", required=True)
    compile_ = relations_sub.add_parser(
        "compile", help="compile a JSON feed into a snapshot (gateway.relations accepts "
        "either; a snapshot loads in a fraction of a second), written atomically")
    compile_.add_argument("--feed", required=True, help="JSON feed {\"relations\": [...]}")
    compile_.add_argument("--out", required=True, help="snapshot file to write")
    compile_.set_defaults(func=cmd_relations_compile)

    from gateway.retention import add_parsers as add_retention_parsers
    add_retention_parsers(sub)
    from gateway.admin import add_parsers

    add_parsers(certs_sub, sub)
    _add_completion(sub)
    return parser


def _add_completion(sub: Any) -> None:
    """``gateway completion bash|zsh``: the shell completion script of this
    very parser (shtab), to source or install."""
    p = sub.add_parser("completion", help="print the shell completion script: "
                       "source <(gateway completion bash), or install it (zsh: as _gateway "
                       "in a directory of $fpath)")
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=cmd_completion)


# Options that name a file or a directory: the shell completes paths for them.
_FILE_OPTIONS = {"config", "feed", "out", "log", "keys", "cert", "key", "cacert", "csr"}
_DIR_OPTIONS = {"key_dir", "tenants", "certs", "work"}


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    parser = build_parser()
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings and action.dest in _FILE_OPTIONS:
                action.complete = shtab.FILE  # type: ignore[attr-defined]
            elif action.option_strings and action.dest in _DIR_OPTIONS:
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    print(shtab.complete(parser, shell=args.shell), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)  # text on stderr until a config says otherwise
    from gateway.admin import AdminCallFailed

    try:
        code: int = args.func(args)
    except ListenerUnavailable as exc:  # one line naming the listener and the address
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except NotReadyYet as exc:
        print(f"gateway: not ready yet, exiting to be started again: {exc}", file=sys.stderr)
        return NotReadyYet.exit_code
    except AdminCallFailed as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return exc.exit_code  # 3 unreachable, 4 TLS handshake refused
    return code


if __name__ == "__main__":
    sys.exit(main())
