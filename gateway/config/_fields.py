"""The vocabulary the configuration schemas are written in (``_schema``,
``_tenant_file``): strict tables that refuse unknown keys, typed keys with a
description, a unit and what SIGHUP does to them; and :func:`shape`, which
reads a key's type back for error messages, the generated reference
(docs/configuration.md) and the JSON Schema.

A unit comes from the key's name (units in the names: ``_s`` seconds,
``_h`` hours, ``_days``, ``_mb`` MiB, ``_bytes``).
"""

from __future__ import annotations

import datetime
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Gt, Le, MinLen
from pydantic import BaseModel, ConfigDict, Field

# What `kill -HUP` does to a key (the "SIGHUP" column of the reference).
RESTART = "no (restart)"
REREAD = "what it names is re-read (the path: restart)"
RELOADED = "yes"

UNITS = (("_per_s", "per second"), ("_days", "days"), ("_bytes", "bytes"), ("_mb", "MiB"),
         ("_h", "hours"), ("_s", "seconds"))


class Table(BaseModel):
    """A TOML table of the configuration: every key typed strictly (no
    ``"5"`` for 5, no 0.4 for an integer, no 1 for true), no unknown key."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Path:
    """Marks a string that names a file or directory (relative paths are read
    against the config file's directory)."""


PATH = _Path()
NonEmpty = Annotated[str, Field(min_length=1)]
FilePath = Annotated[str, Field(min_length=1), PATH]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveNumber = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=0, le=65535)]


def setting(default: Any = ..., doc: str = "", *, sighup: str = RESTART,
        shown: str | None = None) -> Any:
    """A key of a table: its default (``...``: required), what it is for, what
    SIGHUP does to it and, when the default is computed, how to show it."""
    extra: dict[str, Any] = {"x-sighup": sighup}
    if shown is not None:
        extra["x-default"] = shown
    return Field(default, description=doc, json_schema_extra=extra)


def unit_of(name: str) -> str:
    return next((unit for suffix, unit in UNITS if name.endswith(suffix)), "")


@dataclass(frozen=True)
class Shape:
    """A key's type as the reference, the JSON Schema and error messages
    describe it."""

    kind: str  # bool int float str path date choice table map array
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    choices: tuple[str, ...] = ()
    model: type[BaseModel] | None = None  # kind table
    item: Shape | None = None  # kind map, array
    optional: bool = False

    def expected(self) -> str:
        """What a value must be, as a phrase: "a positive integer"."""
        if self.kind == "bool":
            return "true or false"
        if self.kind in ("int", "float"):
            noun = "integer" if self.kind == "int" else "number"
            if self.ge is not None and self.le is not None:
                phrase = f"{noun} between {_num(self.ge)} and {_num(self.le)}"
            elif self.gt == 0 and self.le is None:
                phrase = f"positive {noun}"
            else:
                bounds = [f"{op} {_num(v)}" for op, v in
                          ((">", self.gt), (">=", self.ge), ("<=", self.le)) if v is not None]
                phrase = " and ".join([f"{noun} {bounds[0]}", *bounds[1:]]) if bounds \
                    else noun
            return ("an " if phrase[0] in "aeiou" else "a ") + phrase
        if self.kind == "path":
            return "a path"
        if self.kind == "date":
            return "a date (YYYY-MM-DD, unquoted)"
        if self.kind == "str":
            return "a non-empty string" if self.min_length else "a string"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "table":
            return "a table"
        assert self.item is not None
        if self.kind == "map":
            return f"a table of {_plural(self.item)}"
        return ("a non-empty array of " if self.min_length else "an array of ") + \
            _plural(self.item)


def _num(value: float) -> str:
    return f"{value:g}"


def _plural(item: Shape) -> str:
    if item.kind == "array" and item.item is not None:
        return "arrays of " + _plural(item.item)
    return {"table": "tables", "str": "strings", "path": "paths",
            "choice": "strings (" + ", ".join(item.choices) + ")"}.get(item.kind, item.kind)


def shape(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> Shape:
    """The :class:`Shape` of a type annotation (with its field's metadata)."""
    meta = list(metadata)
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation, *more = typing.get_args(annotation)
            for m in more:
                meta.extend(getattr(m, "metadata", None) or [m])
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = True
            annotation = args[0]
            continue
        break
    bounds: dict[str, Any] = {"optional": optional}
    for m in meta:
        if isinstance(m, Gt):
            bounds["gt"] = m.gt
        elif isinstance(m, Ge):
            bounds["ge"] = m.ge
        elif isinstance(m, Le):
            bounds["le"] = m.le
        elif isinstance(m, MinLen):
            bounds["min_length"] = m.min_length
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return Shape("choice", choices=tuple(typing.get_args(annotation)), **bounds)
    if origin is dict:
        return Shape("map", item=shape(typing.get_args(annotation)[1]), **bounds)
    if origin is list:
        return Shape("array", item=shape(typing.get_args(annotation)[0]), **bounds)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return Shape("table", model=annotation, **bounds)
    if annotation is str:
        return Shape("path" if PATH in meta else "str", **bounds)
    names = {bool: "bool", int: "int", float: "float", datetime.date: "date"}
    return Shape(names[annotation], **bounds)
