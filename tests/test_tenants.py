"""tenants/: the declared tenants, and errors that name file and key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.tenants import load_tenants

REPO = Path(__file__).resolve().parents[1]


def test_demo_tenants_cover_the_report() -> None:
    reg = load_tenants(REPO / "tenants")
    kinds = {t.id: t.kind for t in reg}
    hes = ["ores", "fluvius", "sibelga", "resa", "pidpa", "dewatergroep", "farys"]
    assert all(kinds[t] in ("dso", "water") for t in hes)
    assert {t.id for t in reg if "hes_consortium" in t.memberships} == set(hes)  # seven companies
    assert sum(k == "supplier" for k in kinds.values()) >= 3
    assert "social-welfare" in kinds.values()
    assert "clearing-house" in kinds.values()
    assert [kinds[t] for t in ("swde", "proximus", "orange", "telenet")] == \
        ["water", "telecom", "telecom", "telecom"]
    assert kinds["engie-it"] == "it-provider"
    assert "shared-system" in kinds.values()
    assert reg.tenants["ores"].cmh_coordinator is True


def _load(tmp_path: Path, text: str, name: str = "acme") -> None:
    (tmp_path / f"{name}.toml").write_text(text)
    load_tenants(tmp_path)


GOOD = 'id = "acme"\nname = "Acme"\nkind = "dso"\n[[principals]]\nkind = "service"\nname = "api"\n'


@pytest.mark.parametrize("text,fragment", [
    (GOOD.replace('kind = "dso"', 'kind = "bank"'), "acme.toml: kind: must be one of"),
    (GOOD.replace('id = "acme"', 'id = "other"'), "acme.toml: id: must equal the file name"),
    (GOOD.replace('name = "Acme"\n', ""), "acme.toml: name: is required"),
    ('colour = "red"\n' + GOOD, "acme.toml: colour: unknown key"),
    (GOOD.replace('name = "api"', 'name = "API!"'), "acme.toml: principals[0].name: must match"),
    (GOOD.replace('kind = "service"', 'kind = "robot"'),
     "acme.toml: principals[0].kind: must be one of person, service (got 'robot')"),
    (GOOD + 'roles = ["god"]\n', "acme.toml: principals[0].roles: unknown role 'god'"),
    # D1: the gateway makes every tenant's canary principal itself.
    (GOOD.replace('name = "api"', 'name = "canary"'),
     "acme.toml: principals[0].name: 'canary' is reserved for the gateway's canary prober"),
    (GOOD + 'roles = ["canary"]\n', "acme.toml: principals[0].roles: unknown role 'canary'"),
    (GOOD.replace('kind = "dso"', 'kind = "dso"\ngln = "5410000000018"'),
     "acme.toml: gln: must be a 13-digit GLN"),
    ('id = "acme"\nname = "Acme"\nkind = "dso"\n',
     "acme.toml: principals: is required (a non-empty array of tables)"),
    ("id = ", "acme.toml: not valid TOML"),
    (GOOD + GOOD.split("\n", 3)[3], "duplicate principal 'api'"),
    (GOOD.replace('kind = "dso"', 'kind = "dso"\nvalid_until = "2027-12-31"'),
     "acme.toml: valid_until: must be a date"),
    (GOOD.replace('kind = "dso"', 'kind = "dso"\nvalid_from = 2027-01-01\n'
                  'valid_until = 2026-12-31'),
     "acme.toml: valid_until: must not be before valid_from"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    assert fragment in str(exc.value)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no tenant files"):
        load_tenants(tmp_path)


def test_a_contract_window_covers_whole_utc_days(tmp_path: Path) -> None:
    """D9: valid_from and valid_until are days, both inclusive (UTC)."""
    text = GOOD.replace('kind = "dso"', 'kind = "dso"\nvalid_from = 2026-01-01\n'
                        'valid_until = 2027-12-31')
    (tmp_path / "acme.toml").write_text(text)
    acme = load_tenants(tmp_path).tenants["acme"]
    assert acme.contract_bounded
    at = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731
    assert acme.contract_refusal(at(2025, 12, 31, 23, 59, 59)) == "tenant-contract-not-started"
    assert acme.contract_refusal(at(2026, 1, 1)) is None
    assert acme.contract_refusal(at(2027, 12, 31, 23, 59, 59)) is None
    assert acme.contract_refusal(at(2028, 1, 1)) == "tenant-contract-ended"
    (tmp_path / "acme.toml").write_text(GOOD)
    plain = load_tenants(tmp_path).tenants["acme"]
    assert not plain.contract_bounded and plain.contract_refusal(at(2999, 1, 1)) is None


def test_every_tenant_has_the_gateways_canary_principal() -> None:
    """D1: made by the gateway, never declared; canary role only, no reader."""
    reg = load_tenants(REPO / "tenants")
    for tenant in reg:
        found = reg.principal(tenant.id, "service", "canary")
        assert found is not None and found[0] is tenant
        assert found[1].roles == frozenset({"canary"})
        assert ("service", "canary") not in tenant.principals  # not in reviews or lists
    assert reg.principal("ores", "person", "canary") is None
    assert reg.principal("nobody", "service", "canary") is None
    assert reg.principal("ores", "service", "nobody") is None
