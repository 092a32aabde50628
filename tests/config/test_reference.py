"""docs/configuration.md and the editors' JSON Schemas (docs/schema/) are
generated from the configuration's schemas and kept current: a key added,
renamed or given another default fails here until `make config-docs`."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.config import GatewayFile, TenantFile
from gateway.config._reference import files, markdown

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


@pytest.mark.parametrize("name", sorted(files()))
def test_the_generated_files_in_docs_are_current(name: str) -> None:
    assert (DOCS / name).read_text(encoding="utf-8") == files()[name], (
        f"docs/{name} differs from the schema: run `make config-docs`")


def test_the_regeneration_command_writes_them(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway.config", str(tmp_path)],
                          capture_output=True, text=True, check=True, timeout=60)
    for name, text in files().items():
        assert (tmp_path / name).read_text(encoding="utf-8") == text
        assert f"wrote {tmp_path / name}" in proc.stdout


def _keys(model: Any, prefix: str = "") -> list[str]:
    out = []
    for key, info in model.model_fields.items():
        out.append(prefix + key)
        annotation = info.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            out += _keys(annotation, f"{prefix}{key}.")
    return out


def test_the_reference_has_a_row_for_every_key() -> None:
    text = markdown()
    for name in _keys(GatewayFile) + _keys(TenantFile):
        leaf = name.rsplit(".", 1)[-1]
        assert f"| `{leaf}` |" in text or f"[{name}" in text or f".{leaf}]" in text, name
    # Type, default, unit and SIGHUP, e.g.:
    assert ("| `health_interval_s` | positive number | `5` | seconds | no (restart) |"
            in text)
    assert "| `trust_bundle` | path | required |  | what it names is re-read" in text
    assert "| `burst` | positive integer | `4000` |  | yes |" in text


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((DOCS / "schema" / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_the_json_schemas_accept_the_repositorys_files_and_refuse_mistakes() -> None:
    gateway = validator("gateway.schema.json")
    configs = [REPO / "deploy" / "gateway.example.toml",
               *(REPO / "deploy" / "systemd").glob("*.toml"),
               *(REPO / "deploy" / "kubernetes" / "config").glob("*.toml")]
    for path in configs:
        doc = tomllib.loads(path.read_text())
        assert not list(gateway.iter_errors(doc)), path
    doc = tomllib.loads(configs[0].read_text())
    doc["gateway"]["health_intervall_s"] = 5
    doc["upstreams"]["hes"]["pool_size"] = 0.4
    doc["listener"] = {"data": {"port": 1}}
    errors = {e.message for e in gateway.iter_errors(doc)}
    assert any("health_intervall_s" in m for m in errors)
    assert any("0.4" in m for m in errors)
    assert any("listener" in m for m in errors)
    tenant = validator("tenant.schema.json")
    for path in (REPO / "tenants").glob("*.toml"):
        assert not list(tenant.iter_errors(tomllib.loads(path.read_text()))), path
    assert list(tenant.iter_errors({"id": "a", "name": "A", "kind": "bank",
                                    "principals": [{"kind": "service", "name": "x"}]}))
