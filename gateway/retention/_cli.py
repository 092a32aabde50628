"""``gateway retention report [--config FILE] [--format text|json]``: what
the retention policy would delete and when, per category, from the state
and outbox the configured gateway uses. It deletes nothing (the running
gateway's control duties do). Exit 0; a configuration error is the CLI's (2)."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.push import Outbox, PostgresOutbox, SqliteOutbox
from gateway.retention._duty import Retention, RetentionReport
from gateway.state import SqliteStore, StateStore, open_store
from gateway.tenants import load_tenants

# The report reads times and counts, never a payload: the outbox is opened
# without its data key.
_NO_KEY = None


def _open(config: GatewayConfig) -> tuple[StateStore, Outbox | None]:
    if config.state_url is not None:
        store = open_store(config.state_url)
    else:
        path = config.data_dir / "state.db"
        if not path.exists():
            raise ConfigError(f"{config.source}: no state at {path}: has this gateway run?")
        store = SqliteStore(path)
    outbox: Outbox | None = None
    if config.shared_state and config.state_url is not None:
        outbox = PostgresOutbox(config.state_url, _NO_KEY, owner="retention-report")
    elif (config.local_dir / "outbox.db").exists():
        outbox = SqliteOutbox(config.local_dir / "outbox.db", _NO_KEY,
                              owner="retention-report")
    return store, outbox


def report_for(config: GatewayConfig) -> RetentionReport:
    registry = load_tenants(config.tenants_dir)
    store, outbox = _open(config)
    try:
        return Retention(store=store, outbox=outbox, config=config.retention,
                         declared=lambda key: registry.principal(*key) is not None).report()
    finally:
        store.close()
        if outbox is not None:
            outbox.close()


def _day(at: datetime | None) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M UTC")


def render(report: RetentionReport) -> str:
    lines = [f"retention report at {_day(report.now)} (nothing deleted; the running "
             "gateway deletes what is due)"]
    for c in report.categories:
        lines.append(f"{c.category} ({c.policy}): {c.kept} kept, {c.due} due now"
                     + (f", {c.held} held" if c.held else "")
                     + f"; oldest {_day(c.oldest)}, due {_day(c.oldest_due_at)}")
        for i in c.items:
            note = " (still declared in tenants/: kept until removed there)" \
                if i.status == "held" else ""
            lines.append(f"  {i.name}  since {_day(i.at)}  due {_day(i.due_at)}  "
                         f"{i.status}{note}")
    return "\n".join(lines) + "\n"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    retention = sub.add_parser("retention", help="the retention policy ([retention], D8, D10)")
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    report = retention_sub.add_parser(
        "report", help="print what the retention policy would delete and when (per "
        "category: count, oldest, the date each becomes due), deleting nothing")
    report.add_argument("--config", default="var/demo/gateway.toml",
                        help="the gateway's TOML config (default: the demo's)")
    report.add_argument("--format", choices=("text", "json"), default="text")

    def run(args: argparse.Namespace) -> int:
        config = GatewayConfig.from_toml(Path(args.config), os.environ)
        result = report_for(config)
        if args.format == "json":
            print(json.dumps(result.as_dict(), indent=2))
        else:
            print(render(result), end="")
        return 0

    report.set_defaults(func=run)
