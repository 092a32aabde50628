"""docs/configuration.md and the JSON Schemas of docs/schema/, rendered from
the schemas (``_schema``, ``_tenant_file``): ``python -m gateway.config``
writes them, and a test fails when the files in the repository differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gateway.config._fields import Shape, shape, unit_of
from gateway.config._schema import GatewayFile
from gateway.config._tenant_file import TenantFile
from gateway.config._validate import ENV_PREFIX

JSON_SCHEMA = "https://json-schema.org/draft/2020-12/schema"
GATEWAY_SCHEMA = "schema/gateway.schema.json"
TENANT_SCHEMA = "schema/tenant.schema.json"

_INTRO = f"""\
# Configuration reference

<!-- Generated from the schemas in gateway/config/ by `python -m gateway.config`
(or `make config-docs`); tests/config/test_reference.py fails when this file
and the schemas differ. Edit the schemas, not this file. -->

Two kinds of TOML file configure the gateway: `gateway.toml` (`gateway serve
--config FILE`; a commented example is `deploy/gateway.example.toml`) and one
tenant file per tenant in the directory `[gateway] tenants_dir` names.

Every key has a type and nothing else is accepted: an unknown key or table, or
a value of the wrong type (`"5"` for 5, `0.4` for an integer, `1` for
`true`), stops `gateway serve` with exit status 2 and a message naming the
file, the dotted key and what was expected, with the nearest known key for a
misspelt one:

```
gateway: configuration error: gateway.toml: gateway.health_intervall_s: unknown key \
(did you mean gateway.health_interval_s?)
gateway.toml: upstreams.hes.pool_size: must be a positive integer (got 0.4)
```

`gateway config check --config FILE` makes the same checks, on the config file
and the tenant files it names, without starting anything (exit 0 or 2).
Relative paths are read against the config file's directory. Units are in the
key names (`_s` seconds, `_h` hours, `_days`, `_mb` MiB, `_bytes`).

The SIGHUP column says what `kill -HUP <pid>` does: `gateway.toml` itself is
read at start only; the tenant files, the relation feed and the TLS files it
names are re-read (their paths are not).

For editors that check TOML against a JSON Schema (Taplo, Even Better TOML):
`docs/{GATEWAY_SCHEMA}` and `docs/{TENANT_SCHEMA}`, generated with this file.

## Environment overrides

For containers, a variable `{ENV_PREFIX}<TABLE>__<KEY>` sets a key of
`gateway.toml` over the file's value, nested tables joined by `__` too:
`{ENV_PREFIX}GATEWAY__HEALTH_INTERVAL_S=10`, `{ENV_PREFIX}LISTENERS__DATA__PORT=8443`,
`{ENV_PREFIX}UPSTREAMS__HES__URL=https://hes.internal`,
`{ENV_PREFIX}STATE__URL=postgresql://...`. The text is read as the key's type
(`10`, `0.5`, `true` or `false`; a string as written) and validated like the
file's values; a wrong one stops start-up with exit status 2 naming the
variable. A variable that names no key, or a table (`[accounts]`,
`[push.endpoints]` are set in the file), is refused the same way. Variables
without `__` (`GATEWAY_VAULT_KEY`, `GATEWAY_ADMIN_CERT`, ...) are not
overrides. `gateway serve` and `gateway config check` apply them; tenant files
have none.
"""


def _default(info: FieldInfo, here: Shape) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "x-default" in extra:
        return str(extra["x-default"])
    if info.is_required():
        return "required"
    return f"`{_toml(info.default)}`"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _sighup(info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("x-sighup", ""))


def _type(here: Shape) -> str:
    phrase = here.expected()
    for article in ("a ", "an "):
        if phrase.startswith(article):
            return phrase[len(article):]
    return phrase


def _sections(model: type[BaseModel], name: str) -> Iterator[tuple[str, type[BaseModel],
                                                                   str]]:
    """(heading, table, note) for ``model`` and every table under it, in order."""
    yield name, model, ""
    for key, info in model.model_fields.items():
        here = shape(info.annotation, info.metadata)
        child = here.model if here.kind == "table" else (
            here.item.model if here.kind == "array" and here.item else None)
        if child is None:
            continue
        inner = f"{name.strip('[]')}.{key}" if name.startswith("[") else key
        fields = list(child.model_fields.values())
        kinds = {shape(f.annotation, f.metadata).model for f in fields}
        if len(fields) > 1 and len(kinds) == 1 and None not in kinds:
            # A table of like tables (the upstreams): one section for all.
            (like,) = kinds
            assert like is not None
            note = "One table each: " + ", ".join(
                f"`[{inner}.{k}]`" for k in child.model_fields) + ", each required."
            yield f"[{inner}.<name>]", like, note
        elif here.kind == "array":
            yield from _sections(child, f"[[{inner}]]")
        else:
            yield from _sections(child, f"[{inner}]")


def _rows(model: type[BaseModel]) -> list[str]:
    rows = []
    for key, info in model.model_fields.items():
        here = shape(info.annotation, info.metadata)
        if here.kind == "table" or (here.kind == "array" and here.item
                                    and here.item.kind == "table"):
            continue
        description = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(here)} | {_default(info, here)} | "
                    f"{unit_of(key)} | {_sighup(info)} | {description} |")
    return rows


def _document(model: type[BaseModel], title: str, top: str) -> list[str]:
    out = [f"## {title}", ""]
    for heading, table, note in _sections(model, top):
        rows = _rows(table)
        if not rows:
            continue
        out += [f"### {heading}", ""]
        if note:
            out += [note, ""]
        out += ["| key | type | default | unit | SIGHUP | what |",
                "| --- | --- | --- | --- | --- | --- |", *rows, ""]
    return out


def markdown() -> str:
    """docs/configuration.md."""
    lines = [_INTRO,
             *_document(GatewayFile, "gateway.toml", "Top-level keys"),
             *_document(TenantFile, "Tenant files (`tenants/<id>.toml`)", "Top-level keys")]
    return "\n".join(lines).rstrip() + "\n"


def json_schema(model: type[BaseModel], title: str) -> dict[str, Any]:
    """A JSON Schema (2020-12) of a TOML file, for editors."""
    return {"$schema": JSON_SCHEMA, "title": title, **_object(model)}


def _object(model: type[BaseModel]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        here = shape(info.annotation, info.metadata)
        prop = _json(here)
        text = info.description or ""
        unit = unit_of(key)
        prop["description"] = f"{text} ({unit})" if unit else text
        if not info.is_required() and here.kind not in ("table", "map") \
                and info.default is not None:
            prop["default"] = info.default
        properties[key] = prop
    out: dict[str, Any] = {"type": "object", "additionalProperties": False,
                           "properties": properties}
    required = [k for k, info in model.model_fields.items() if info.is_required()]
    if required:
        out["required"] = required
    return out


def _json(here: Shape) -> dict[str, Any]:
    if here.kind == "table":
        assert here.model is not None
        return _object(here.model)
    if here.kind == "map":
        assert here.item is not None
        return {"type": "object", "additionalProperties": _json(here.item)}
    if here.kind == "array":
        assert here.item is not None
        out: dict[str, Any] = {"type": "array", "items": _json(here.item)}
        if here.min_length:
            out["minItems"] = here.min_length
        return out
    if here.kind == "choice":
        return {"enum": list(here.choices)}
    if here.kind in ("str", "path"):
        return {"type": "string", "minLength": here.min_length} if here.min_length \
            else {"type": "string"}
    if here.kind == "bool":
        return {"type": "boolean"}
    out = {"type": "integer" if here.kind == "int" else "number"}
    for name, word in (("gt", "exclusiveMinimum"), ("ge", "minimum"), ("le", "maximum")):
        bound = getattr(here, name)
        if bound is not None:
            out[word] = bound
    return out


def files() -> dict[str, str]:
    """Each generated file, by its path under docs/, with its text."""
    def dump(doc: dict[str, Any]) -> str:
        return json.dumps(doc, indent=2) + "\n"

    return {"configuration.md": markdown(),
            GATEWAY_SCHEMA: dump(json_schema(GatewayFile, "gateway.toml")),
            TENANT_SCHEMA: dump(json_schema(TenantFile, "tenant file (tenants/<id>.toml)"))}


def write(docs: Path) -> list[Path]:
    """Write the generated files under ``docs``; the paths written."""
    written = []
    for name, text in files().items():
        path = docs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
