"""``gateway demo`` (one process or a fleet on a local PostgreSQL) and
``gateway certs init-dev``."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from gateway.cli._run import run_until_signal
from gateway.errors import ConfigError, ListenerUnavailable

# The demo runs the isolation canary prober this often (README: Isolation canaries).
DEMO_CANARY_S = 30.0


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
        run_until_signal(start, stack.stop, lambda: stack.gateway.reload_async())
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
        run_until_signal(start, fleet.stop)
    return 0


def cmd_certs_init_dev(args: argparse.Namespace) -> int:
    from gateway.demo import TRUST_DOMAIN, ensure_dev_pki
    from gateway.tenants import load_tenants

    pki = ensure_dev_pki(Path(args.out), load_tenants(Path(args.tenants)), TRUST_DOMAIN)
    print(f"dev PKI in {pki.root}: trust bundle {pki.ca_cert}")
    return 0
