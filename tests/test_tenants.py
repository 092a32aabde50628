"""tenants/: the declared tenants, and errors that name file and key."""

from __future__ import annotations

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
    (GOOD.replace('kind = "dso"', 'kind = "dso"\ngln = "5410000000018"'),
     "acme.toml: gln: must be a 13-digit GLN"),
    ('id = "acme"\nname = "Acme"\nkind = "dso"\n',
     "acme.toml: principals: is required (a non-empty array of tables)"),
    ("id = ", "acme.toml: not valid TOML"),
    (GOOD + GOOD.split("\n", 3)[3], "duplicate principal 'api'"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    assert fragment in str(exc.value)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no tenant files"):
        load_tenants(tmp_path)
