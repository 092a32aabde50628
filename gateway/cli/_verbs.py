"""The small verbs: ``state data-plane-grants``, ``relations compile``,
``config check``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.errors import ConfigError


def cmd_state_grants(args: argparse.Namespace) -> int:
    from gateway.state import data_plane_grants

    try:
        print(data_plane_grants(args.role), end="")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return 0


def state_location(config: Path) -> tuple[str | None, Path]:
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
