"""Environment overrides for containers: GATEWAY_<TABLE>__<KEY> sets a key of
gateway.toml over the file's value, read as the key's type and validated like
it; a wrong one stops start-up with exit 2 naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from tests.config.test_schema import EXAMPLE, check


def load(**environ: str) -> GatewayConfig:
    return GatewayConfig.from_toml(EXAMPLE, environ)


def test_variables_override_the_files_keys_by_type() -> None:
    cfg = load(GATEWAY_GATEWAY__HEALTH_INTERVAL_S="7.5",
               GATEWAY_LISTENERS__DATA__PORT="9443",
               GATEWAY_LISTENERS__ADMIN__HOST="::1",
               GATEWAY_UPSTREAMS__HES__URL="https://hes.internal/",
               GATEWAY_UPSTREAMS__HES__POOL_SIZE="16",
               GATEWAY_VAULT__APPROVER_OTHER_TEAM="false",
               GATEWAY_FLEET__REPLICA_ID="1",  # a string key keeps its text
               GATEWAY_STATE__URL="sqlite:////srv/state.db")
    assert cfg.health_interval_s == 7.5
    assert (cfg.data.port, cfg.admin.host) == (9443, "::1")
    assert (cfg.upstreams["hes"].url, cfg.upstreams["hes"].pool_size) == (
        "https://hes.internal", 16)
    assert cfg.vault.approver_other_team is False
    assert cfg.fleet.replica_id == "1"
    assert cfg.state_url == "sqlite:////srv/state.db"
    # Without the environment, or with variables that are no override: the file.
    plain = GatewayConfig.from_toml(EXAMPLE)
    assert (plain.health_interval_s, plain.data.port) == (5.0, 8443)
    same = load(GATEWAY_VAULT_KEY="x", GATEWAY_ADMIN_CERT="y", OTHER__X="z")
    assert (same.health_interval_s, same.data.port) == (5.0, 8443)


def test_a_variable_can_set_a_key_of_a_table_the_file_lacks() -> None:
    cfg = load(GATEWAY_SOC__SYSLOG="udp://127.0.0.1:5514")
    assert cfg.soc_syslog == "udp://127.0.0.1:5514"


@pytest.mark.parametrize(("environ", "message"), [
    ({"GATEWAY_UPSTREAMS__HES__POOL_SIZE": "0.4"},
     "environment variable GATEWAY_UPSTREAMS__HES__POOL_SIZE (upstreams.hes.pool_size): "
     "must be a positive integer (got '0.4')"),
    ({"GATEWAY_GATEWAY__HEALTH_INTERVAL_S": "soon"},
     "environment variable GATEWAY_GATEWAY__HEALTH_INTERVAL_S (gateway.health_interval_s): "
     "must be a positive number (got 'soon')"),
    ({"GATEWAY_GATEWAY__HEALTH_INTERVAL_S": "inf"}, "(got 'inf')"),
    ({"GATEWAY_VAULT__APPROVER_OTHER_TEAM": "yes"},
     "GATEWAY_VAULT__APPROVER_OTHER_TEAM (vault.approver_other_team): must be true or false"),
    ({"GATEWAY_LISTENERS__DATA__PORT": "+"}, "listeners.data.port): must be an integer"),
    ({"GATEWAY_GATEWAY__EVENT_LOOP": "trio"}, "(gateway.event_loop): must be one of auto"),
    ({"GATEWAY_GATEWAY__HEALTH_INTERVALL_S": "3"},
     "environment variable GATEWAY_GATEWAY__HEALTH_INTERVALL_S: no key "
     "gateway.health_intervall_s (did you mean GATEWAY_GATEWAY__HEALTH_INTERVAL_S?)"),
    ({"GATEWAY_LISTENER__DATA__PORT": "1"},
     "GATEWAY_LISTENER__DATA__PORT: no key listener (did you mean GATEWAY_LISTENERS?)"),
    ({"GATEWAY_LISTENERS__DATA": "1"},
     "GATEWAY_LISTENERS__DATA: listeners.data is a table: set one of its keys "
     "(GATEWAY_LISTENERS__DATA__<KEY>)"),
    ({"GATEWAY_ACCOUNTS__X": "hes"},
     "GATEWAY_ACCOUNTS__X: accounts is a table of strings (hes, clearing, cmh, itsm): set it "
     "in the config file"),
    ({"GATEWAY_PUSH__ENDPOINTS__ORES": "https://x"},
     "GATEWAY_PUSH__ENDPOINTS__ORES: push.endpoints is a table of strings: set it in the "
     "config file"),
    ({"GATEWAY_GATEWAY__PORT__X": "1"}, "no key gateway.port"),
    ({"GATEWAY_GATEWAY__DRAIN_TIMEOUT_S__X": "1"},
     "GATEWAY_GATEWAY__DRAIN_TIMEOUT_S__X: gateway.drain_timeout_s is a positive number, "
     "not a table"),
])
def test_a_wrong_variable_is_refused_naming_it(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(**environ)
    assert message in str(exc.value)


def test_the_check_and_serve_apply_the_environment(tmp_path: Path) -> None:
    proc = check(EXAMPLE, GATEWAY_UPSTREAMS__HES__POOL_SIZE="0.4")
    assert proc.returncode == 2
    assert "GATEWAY_UPSTREAMS__HES__POOL_SIZE (upstreams.hes.pool_size)" in proc.stderr
    assert check(EXAMPLE, GATEWAY_UPSTREAMS__HES__POOL_SIZE="4").returncode == 0
