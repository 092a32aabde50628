"""The ``[state]`` table of the config: which backend holds the gateway's
state. Errors name the file and the key, at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from tests.audit.test_prune import config_doc


def load(tmp_path: Path, state: dict[str, Any] | None) -> GatewayConfig:
    doc = config_doc(None)
    if state is not None:
        doc["state"] = state
    return GatewayConfig.from_mapping(doc, base=tmp_path, source="g.toml")


def test_without_a_state_table_the_embedded_file_is_used(tmp_path: Path) -> None:
    assert load(tmp_path, None).state_url is None
    assert load(tmp_path, {}).state_url is None


def test_a_relative_sqlite_path_is_read_against_the_config_directory(tmp_path: Path) -> None:
    assert load(tmp_path, {"url": "sqlite:///var/state.db"}).state_url == \
        f"sqlite:///{(tmp_path / 'var' / 'state.db').resolve()}"
    assert load(tmp_path, {"url": "sqlite:////srv/state.db"}).state_url == \
        "sqlite:////srv/state.db"


def test_a_postgresql_url_is_kept_as_written(tmp_path: Path) -> None:
    url = "postgresql://gateway@db.internal:5432/gateway?sslmode=verify-full"
    cfg = load(tmp_path, {"url": url})
    assert (cfg.state_url, cfg.state_max_staleness_s) == (url, 5.0)
    assert load(tmp_path, {"url": url, "max_staleness_s": 2}).state_max_staleness_s == 2.0


@pytest.mark.parametrize(("state", "message"), [
    ({"url": "mysql://db/gateway"}, r"g.toml: state.url: must be sqlite:///PATH or postgresql"),
    ({"url": 5}, r"g.toml: state.url: must be a non-empty string \(got 5\)"),
    ({"dsn": "postgresql://x"}, r"g.toml: state.dsn: unknown key \(known: url, max_staleness_s\)"),
    ({"max_staleness_s": "soon"}, r"g.toml: state.max_staleness_s: must be a positive number"),
])
def test_a_wrong_state_table_is_refused_at_start_up(tmp_path: Path, state: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, state)


# -- [fleet]: what this process is among the replicas ---------------------------

PG = {"url": "postgresql://gateway@db.internal/gateway"}


def load_fleet(tmp_path: Path, fleet: dict[str, Any] | None,
               state: dict[str, Any] | None = None) -> GatewayConfig:
    doc = config_doc(None)
    if state is not None:
        doc["state"] = state
    if fleet is not None:
        doc["fleet"] = fleet
    return GatewayConfig.from_mapping(doc, base=tmp_path, source="g.toml")


def test_one_process_runs_every_role_by_default(tmp_path: Path) -> None:
    fleet = load_fleet(tmp_path, None).fleet
    assert fleet.role == "all"
    assert fleet.replica_id.endswith("-all")
    assert fleet.heartbeat_interval_s == 1.0


def test_a_data_replica_names_itself_and_shares_postgresql_state(tmp_path: Path) -> None:
    cfg = load_fleet(tmp_path, {"role": "data", "replica_id": "dp-1",
                                "heartbeat_interval_s": 0.5}, PG)
    assert (cfg.fleet.role, cfg.fleet.replica_id, cfg.fleet.heartbeat_interval_s) == (
        "data", "dp-1", 0.5)
    assert cfg.shared_state


def test_workers_after_the_first_serve_the_data_plane_only(tmp_path: Path) -> None:
    fleet = load_fleet(tmp_path, {"role": "all", "replica_id": "h1"}, PG).fleet
    assert (fleet.with_worker(0).role, fleet.with_worker(0).replica_id) == ("all", "h1-w0")
    assert (fleet.with_worker(2).role, fleet.with_worker(2).replica_id) == ("data", "h1-w2")


@pytest.mark.parametrize(("fleet", "state", "message"), [
    ({"role": "edge"}, PG, r"g.toml: fleet.role: must be one of all, control, data"),
    ({"role": "data"}, None, r"g.toml: fleet.role: data is one part of a fleet.*postgresql"),
    ({"role": "control"}, {"url": "sqlite:///s.db"}, r"fleet.role: control is one part"),
    ({"replica_id": "a b"}, PG, r"g.toml: fleet.replica_id: letters, digits"),
    ({"replica_id": "x" * 64}, PG, r"g.toml: fleet.replica_id: .*at most 63"),
    ({"heartbeat_interval_s": 0}, PG, r"g.toml: fleet.heartbeat_interval_s"),
    ({"heartbeat_interval_s": 61}, PG,
     r"g.toml: fleet.heartbeat_interval_s: must be a number between 0.05 and 60"),
    ({"leader": True}, PG, r"g.toml: fleet.leader: unknown key"),
])
def test_a_wrong_fleet_table_is_refused_at_start_up(
        tmp_path: Path, fleet: dict[str, Any], state: dict[str, Any] | None,
        message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_fleet(tmp_path, fleet, state)


def test_a_data_plane_replica_holds_no_ca_key(tmp_path: Path) -> None:
    doc = config_doc(None)
    doc.update(state=PG, fleet={"role": "data"}, ca={"cert": "ca.pem", "key": "ca.key"})
    with pytest.raises(ConfigError, match=r"g.toml: ca: a data-plane replica holds no CA key"):
        GatewayConfig.from_mapping(doc, base=tmp_path, source="g.toml")
    doc["fleet"] = {"role": "control"}  # the control plane does
    assert GatewayConfig.from_mapping(doc, base=tmp_path, source="g.toml").ca is not None
