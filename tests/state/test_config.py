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
    ({"url": 5}, r"g.toml: state.url: must be a string"),
    ({"dsn": "postgresql://x"}, r"g.toml: state.dsn: unknown setting"),
    ({"max_staleness_s": "soon"}, r"g.toml: state.max_staleness_s: must be a positive number"),
])
def test_a_wrong_state_table_is_refused_at_start_up(tmp_path: Path, state: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, state)
