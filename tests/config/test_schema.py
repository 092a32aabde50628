"""gateway.toml and the tenant files against their schemas: an unknown key or
table, or a value of the wrong type, is refused at start-up (exit 2) with the
file, the dotted key, what was expected and, for a near miss, the key meant."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    AuditConfig,
    CanaryConfig,
    EdgeLimits,
    GatewayConfig,
    Upstream,
    VaultConfig,
)
from gateway.errors import ConfigError
from gateway.tenants import load_tenants

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "gateway.example.toml"
GATEWAY = [sys.executable, "-m", "gateway"]


def edited(tmp_path: Path, old: str, new: str) -> Path:
    """The example config with one edit, in a deploy/ directory of its own (its
    relative paths still point at the repository's tenants/)."""
    text = EXAMPLE.read_text()
    assert old in text, old
    path = tmp_path / "deploy" / "gateway.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text.replace(old, new, 1))
    return path


def check(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEWAY, "config", "check", "--config", str(path)],
                          capture_output=True, text=True, check=False, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **env})


# The reproductions: each was silently ignored (or a ValueError) before.
@pytest.mark.parametrize(("old", "new", "message"), [
    ("health_interval_s = 5 ", "health_intervall_s = 5 ",
     "gateway.health_intervall_s: unknown key (did you mean gateway.health_interval_s?)"),
    ("[listeners.data]", "[listener.data]",
     "listener: unknown table (did you mean listeners?)"),
    ('trust_bundle = "', 'trust_bundel = "',
     "tls.trust_bundel: unknown key (did you mean tls.trust_bundle?)"),
    ('key = "../certs/dev/server/gateway.key"',
     'key = "../certs/dev/server/gateway.key"\nciphers = "ALL"',
     "tls.ciphers: unknown key (known: cert, key, trust_bundle)"),
    ("pool_size = 128 ", "pool_size = 0.4 ",
     "upstreams.hes.pool_size: must be a positive integer (got 0.4)"),
])
def test_a_mistake_stops_the_check_with_exit_2_naming_file_and_key(
        tmp_path: Path, old: str, new: str, message: str) -> None:
    path = edited(tmp_path, old, new)
    with pytest.raises(ConfigError) as exc:
        GatewayConfig.from_toml(path)
    assert f"{path}: {message}" in str(exc.value)
    proc = check(path)
    assert proc.returncode == 2, proc.stderr
    assert f"gateway: configuration error: {path}: " in proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_example_and_the_deploy_configs_pass_the_check() -> None:
    proc = check(EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    count = len(list((REPO / "tenants").glob("*.toml")))
    assert proc.stdout.startswith(f"{EXAMPLE}: valid ({count} tenant files in ")
    for path in [*(REPO / "deploy" / "systemd").glob("*.toml"),
                 *(REPO / "deploy" / "kubernetes" / "config").glob("*.toml")]:
        GatewayConfig.from_toml(path)  # the tenants they name are not here: file only


def test_the_check_validates_the_tenant_files_too(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    (tenants / "acme.toml").write_text(
        'id = "acme"\nname = "Acme"\nkind = "dso"\nhes_consortum = true\n'
        '[[principals]]\nkind = "service"\nname = "api"\n')
    path = edited(tmp_path, 'tenants_dir = "../tenants"', f'tenants_dir = "{tenants}"')
    proc = check(path)
    assert proc.returncode == 2
    assert (f"{tenants / 'acme.toml'}: hes_consortum: unknown key "
            "(did you mean hes_consortium?)") in proc.stderr


@pytest.mark.parametrize(("old", "new", "message"), [
    # Strict types: no text for a number, no number for a flag, no flag for one.
    ("health_interval_s = 5 ", 'health_interval_s = "5" ',
     "gateway.health_interval_s: must be a positive number (got '5')"),
    ("port = 8443", "port = true", "listeners.data.port: must be an integer between 0 and "
     "65535 (got true)"),
    ("port = 8443", "port = 70000", "listeners.data.port: must be an integer between 0 and "
     "65535 (got 70000)"),
    ("[listeners.ops]                          # plain HTTP: keep it on loopback\n",
     "[listeners.ops]\nallow_non_loopback = 1\n",
     "listeners.ops.allow_non_loopback: must be true or false (got 1)"),
    ("pool_size = 128 ", "pool_size = 0 ",
     "upstreams.hes.pool_size: must be a positive integer (got 0)"),
    ("timeout_s = 10 ", "timeout_s = -1 ",
     "upstreams.hes.timeout_s: must be a positive number (got -1)"),
    ("memory_budget_mb = 1024 ", "memory_budget_mb = 1.5 ",
     "limits.memory_budget_mb: must be a positive integer (got 1.5)"),
    ("raw_retention_days = 90 ", "raw_retention_days = -1 ",
     "audit.raw_retention_days: must be a number >= 0 (got -1)"),
    ('event_loop = "auto"', 'event_loop = "trio"',
     "gateway.event_loop: must be one of auto, uvloop, asyncio (got 'trio')"),
    ('cert = "../certs/dev/server/gateway.pem"', "cert = 5", "tls.cert: must be a path (got 5)"),
    ('trust_domain = "shared-grid.test"', 'trust_domain = ""',
     "gateway.trust_domain: must be a non-empty string (got '')"),
    ('[upstreams.itsm]\n', '[upstreams.itms]\n',
     "upstreams.itms: unknown table (did you mean upstreams.itsm?)"),
    ('[upstreams.itsm]\n', '[upstreams.itms]\n',
     "upstreams.itsm: is required (a table)"),
    ("[audit]\n", "[audit]\nkeep_days = 3\n", "audit.keep_days: unknown key (known: "),
    ("[limits]\n", "[accounts]\nhes-admin = \"hse\"\n[limits]\n",
     "accounts.hes-admin: must be one of hes, clearing, cmh, itsm (got 'hse')"),
    ("[limits]\n", "[tls.extra]\na = 1\n[limits]\n", "tls.extra: unknown table"),
    # D7: a reach names a declared account and known groups.
    ("[limits]\n", "[accounts]\nhes-admin = \"hes\"\n[lockbox.reach]\n"
     "clearing-admin = [\"ores\"]\n[limits]\n",
     "lockbox.reach.clearing-admin: no such account in [accounts]"),
    ("[limits]\n", "[accounts]\nhes-admin = \"hes\"\n[lockbox.reach]\n"
     "hes-admin = [\"@hes-consortum\"]\n[limits]\n",
     "lockbox.reach.hes-admin: unknown group '@hes-consortum'"),
    ("[limits]\n", "[accounts]\nhes-admin = \"hes\"\n[lockbox.reach]\n"
     "hes-admin = \"ores\"\n[limits]\n", "lockbox.reach.hes-admin: must be an array"),
    ("[limits]\n", "[lockbox]\nttl_s = 0\n[limits]\n",
     "lockbox.ttl_s: must be a positive number (got 0)"),
    ('trust_domain = "shared-grid.test"', "trust_domain = {a = 1}",
     "gateway.trust_domain: must be a non-empty string (got a table)"),
    ('trust_domain = "shared-grid.test"', 'trust_domain = ["a"]',
     "gateway.trust_domain: must be a non-empty string (got an array)"),
    ("[gateway]\n", "soc = 5\n[gateway]\n", ": soc: must be a table (got 5)"),
])
def test_types_are_strict_and_tables_closed(tmp_path: Path, old: str, new: str,
                                            message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        GatewayConfig.from_toml(edited(tmp_path, old, new))
    assert message in str(exc.value)


def test_a_reach_naming_an_undeclared_tenant_is_refused_by_config_check(
        tmp_path: Path) -> None:
    """D7: a typo in a reach would leave a tenant untold of the cases that
    touch its data; ``gateway config check`` (and serve) refuses it."""
    def with_reach(entries: str) -> Path:
        path = edited(tmp_path, "[limits]\n", "[accounts]\nhes-admin = \"hes\"\n"
                      f"[lockbox.reach]\nhes-admin = [{entries}]\n[limits]\n")
        path.write_text(path.read_text().replace('tenants_dir = "../tenants"',
                                                 f'tenants_dir = "{REPO / "tenants"}"'))
        return path

    path = with_reach('"@hes-consortium", "orse"')
    proc = check(path)
    assert proc.returncode == 2
    assert f"{path}: lockbox.reach.hes-admin: unknown tenant 'orse'" in proc.stderr
    ok = with_reach('"@hes-consortium", "ores"')
    assert check(ok).returncode == 0, check(ok).stderr
    cfg = GatewayConfig.from_toml(ok)
    assert cfg.lockbox.reach == {"hes-admin": ("@hes-consortium", "ores")}
    assert cfg.lockbox.ttl_s == 4 * 3600


def test_every_mistake_is_named_one_per_line(tmp_path: Path) -> None:
    path = edited(tmp_path, "health_interval_s = 5 ", "health_intervall_s = 5 ")
    path.write_text(path.read_text().replace("pool_size = 128 ", "pool_size = 0.4 "))
    with pytest.raises(ConfigError) as exc:
        GatewayConfig.from_toml(path)
    lines = str(exc.value).splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{path}: ") for line in lines)


def test_integers_are_accepted_for_numbers_and_units_converted(tmp_path: Path) -> None:
    cfg = GatewayConfig.from_toml(edited(tmp_path, "segment_max_mb = 64 ",
                                         "segment_max_mb = 0.5 "))
    assert cfg.health_interval_s == 5.0 and isinstance(cfg.health_interval_s, float)
    assert cfg.audit.segment_max_bytes == 512 * 1024
    assert cfg.audit.segment_max_age_s == 24 * 3600


def minimal() -> dict[str, Any]:
    return {"gateway": {"trust_domain": "t", "tenants_dir": "t", "relations": "r",
                        "data_dir": "d"},
            "tls": {"cert": "c", "key": "k", "trust_bundle": "b"},
            "upstreams": {name: {"url": "http://127.0.0.1:1"}
                          for name in ("hes", "clearing", "cmh", "itsm")}}


def test_the_schemas_defaults_are_the_runtime_defaults(tmp_path: Path) -> None:
    cfg = GatewayConfig.from_mapping(minimal(), base=tmp_path, source="g.toml")
    assert cfg.upstreams["hes"] == Upstream("hes", "http://127.0.0.1:1")
    assert (cfg.vault, cfg.audit, cfg.limits) == (VaultConfig(), AuditConfig(), EdgeLimits())
    defaults = GatewayConfig(trust_domain="t", tenants_dir=tmp_path / "t",
                             relations=tmp_path / "r", data_dir=tmp_path / "d",
                             server_cert=tmp_path / "c", server_key=tmp_path / "k",
                             trust_bundle=tmp_path / "b")
    for name in ("data", "ops", "admin", "assertion_lifetime_s", "signing_publish_ahead_s",
                 "rotation_overlap_s", "health_interval_s", "drain_timeout_s", "event_loop",
                 "http_server", "state_max_staleness_s", "push_max_pending_records",
                 "push_max_body_bytes", "push_lease_s"):
        assert getattr(cfg, name) == getattr(defaults, name), name


def test_a_tenant_file_is_checked_by_its_schema(tmp_path: Path) -> None:
    good = 'id = "acme"\nname = "Acme"\nkind = "dso"\n[[principals]]\nkind = "service"\n' \
        'name = "api"\n'
    cases = {
        good.replace('name = "api"', 'name = "api"\nrole = ["reader"]'):
            "principals[0].role: unknown key (did you mean principals[0].roles?)",
        good + "[quota]\nburst = 10.5\n": "quota.burst: must be a positive integer (got 10.5)",
        good + "[quota]\nupstream_share = 1.5\n":
            "quota.upstream_share: must be a number > 0 and <= 1 (got 1.5)",
        good.replace('kind = "dso"', 'kind = "dso"\nhes_consortium = "yes"'):
            "hes_consortium: must be true or false (got 'yes')",
        good.replace('name = "api"', 'name = "api"\nroles = "reader"'):
            "principals[0].roles: must be an array of strings (got 'reader')",
    }
    for text, message in cases.items():
        (tmp_path / "acme.toml").write_text(text)
        with pytest.raises(ConfigError) as exc:
            load_tenants(tmp_path)
        assert f"{tmp_path / 'acme.toml'}: {message}" in str(exc.value)
    (tmp_path / "acme.toml").write_text(good + "[quota]\nburst = 10\nrate_per_s = 5\n")
    quota = load_tenants(tmp_path).tenants["acme"].quota
    assert quota is not None and (quota.burst, quota.rate_per_s) == (10, 5.0)


def test_the_repositorys_tenant_files_pass() -> None:
    registry = load_tenants(REPO / "tenants")
    for path in (REPO / "tenants").glob("*.toml"):
        assert tomllib.loads(path.read_text())["id"] in registry.tenants


def test_the_canary_prober_is_off_by_default_and_needs_the_ca(tmp_path: Path) -> None:
    """D1: the prober makes its certificates with the CA and probes this
    process's own data plane: it needs [ca] and role "all"."""
    cfg = GatewayConfig.from_mapping(minimal(), base=tmp_path, source="g.toml")
    assert cfg.canary == CanaryConfig() and cfg.canary.enabled is False
    doc = {**minimal(), "canary": {"enabled": True, "interval_s": 30}}
    with pytest.raises(ConfigError) as exc:
        GatewayConfig.from_mapping(doc, base=tmp_path, source="g.toml")
    assert "g.toml: canary.enabled: the canary prober needs [ca]" in str(exc.value)
    doc["ca"] = {"cert": "ca.pem", "key": "ca.key"}
    cfg = GatewayConfig.from_mapping(doc, base=tmp_path, source="g.toml")
    assert cfg.canary == CanaryConfig(enabled=True, interval_s=30.0)
    doc["canary"] = {"enabled": True, "interval_s": 0}
    with pytest.raises(ConfigError) as exc:
        GatewayConfig.from_mapping(doc, base=tmp_path, source="g.toml")
    assert "canary.interval_s: must be a positive number" in str(exc.value)
