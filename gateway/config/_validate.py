"""Validate a configuration document against its schema and say what is
wrong the way an operator can act on it: the file (or the environment
variable), the dotted key, what was expected and what was found, and for an
unknown key the nearest known one ("did you mean ...?").

Environment overrides for containers: ``GATEWAY_<TABLE>__<KEY>`` (nested
tables joined by ``__`` too: ``GATEWAY_LISTENERS__DATA__PORT``,
``GATEWAY_UPSTREAMS__HES__POOL_SIZE``) replace the file's value. The text is
read as the key's type (``5``, ``0.5``, ``true``; strings as written), then
validated like the file's values; a variable that names no key, or a table,
is an error too.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.config._fields import Shape, shape
from gateway.errors import ConfigError

ENV_PREFIX = "GATEWAY_"
M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]


def validate(model: type[M], doc: Mapping[str, Any], source: str,
             origins: Mapping[Loc, str] | None = None) -> M:
    """``doc`` as ``model``, or a ConfigError naming every mistake, one per
    line. ``origins``: keys whose value came from an environment variable."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        lines = [explain(model, err["type"], tuple(err["loc"]), err.get("input"), source,
                         origins or {}, err["msg"])
                 for err in exc.errors(include_url=False)]
        raise ConfigError("\n".join(lines)) from None


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def shape_at(model: type[BaseModel], loc: Loc) -> Shape | None:
    """The shape of the key at ``loc`` in ``model``, None if there is none."""
    here = Shape("table", model=model)
    for part in loc:
        if here.kind == "table":
            assert here.model is not None
            field = here.model.model_fields.get(str(part))
            if field is None:
                return None
            here = shape(field.annotation, field.metadata)
        elif here.kind in ("map", "array") and here.item is not None:
            here = here.item
        else:
            return None
    return here


def explain(model: type[BaseModel], kind: str, loc: Loc, value: Any, source: str,
            origins: Mapping[Loc, str], fallback: str = "invalid") -> str:
    where = f"{source}: {dotted(loc)}"
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            where = f"environment variable {origins[loc[:n]]} ({dotted(loc)})"
            break
    if kind == "extra_forbidden":
        parent = shape_at(model, loc[:-1])
        known = list(parent.model.model_fields) if parent and parent.model else []
        what = "table" if isinstance(value, Mapping) else "key"
        return f"{where}: unknown {what}{_hint(str(loc[-1]), known, loc[:-1])}"
    here = shape_at(model, loc)
    if here is None:
        return f"{where}: {fallback}"
    if kind == "missing":
        return f"{where}: is required ({here.expected()})"
    return f"{where}: must be {here.expected()} (got {_shown(value)})"


def _hint(name: str, known: list[str], parent: Loc, env: bool = False) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    if close:
        full = dotted((*parent, close[0]))
        if env:
            full = ENV_PREFIX + "__".join(full.split(".")).upper()
        return f" (did you mean {full}?)"
    return f" (known: {', '.join(known)})" if known else ""


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def with_environment(model: type[BaseModel], doc: Mapping[str, Any],
                     environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[Loc, str]]:
    """``doc`` with the ``GATEWAY_<TABLE>__<KEY>`` variables of ``environ``
    applied, and which key each one set."""
    out: dict[str, Any] = copy.deepcopy(dict(doc))
    origins: dict[Loc, str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue  # GATEWAY_VAULT_KEY, GATEWAY_ADMIN_CERT, ...: not overrides
        loc: Loc = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        here = _override_target(model, loc, name)
        table = out
        for part in loc[:-1]:
            nested = table.setdefault(str(part), {})
            if not isinstance(nested, dict):
                raise ConfigError(f"environment variable {name}: {dotted(loc[:-1])} is not "
                                  "a table in the config file")
            table = nested
        table[str(loc[-1])] = _from_text(environ[name], here)
        origins[loc] = name
    return out, origins


def _override_target(model: type[BaseModel], loc: Loc, name: str) -> Shape:
    """The shape of the key variable ``name`` sets: a key of a table, not a
    table, and not one of the tables of names (accounts, push.endpoints)."""
    here = Shape("table", model=model)
    for i, part in enumerate(loc):
        assert here.model is not None
        known = list(here.model.model_fields)
        if part not in known:
            raise ConfigError(f"environment variable {name}: no key {dotted(loc[:i + 1])}"
                              f"{_hint(str(part), known, loc[:i], env=True)}")
        field = here.model.model_fields[str(part)]
        here = shape(field.annotation, field.metadata)
        at = f"environment variable {name}: {dotted(loc[:i + 1])} is {here.expected()}"
        if here.kind in ("map", "array"):
            raise ConfigError(f"{at}: set it in the config file")
        last = i == len(loc) - 1
        if here.kind == "table" and last:
            raise ConfigError(f"{at}: set one of its keys ({name}__<KEY>)")
        if here.kind != "table" and not last:
            raise ConfigError(f"{at}, not a table")
    return here


def _from_text(text: str, here: Shape) -> Any:
    """An environment variable's text as the key's type; left as text when it
    is not one, so validation names the variable and what was expected."""
    if here.kind == "bool":
        return {"true": True, "false": False}.get(text, text)
    if here.kind == "int" and re.fullmatch(r"[+-]?[0-9]+", text):
        return int(text)
    if here.kind == "float":
        try:
            number = float(text)
        except ValueError:
            return text
        return number if math.isfinite(number) else text
    return text
