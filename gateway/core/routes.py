"""Routes: method + path template -> upstream, with the rules to apply.

A route says where the resource id sits in the request, which relations a
tenant of each kind must hold on it, where record ids sit in the response and
which field rules shape the answer. Matching is exact on literal segments;
path parameters accept only ``[A-Za-z0-9._-]`` (the target was already
checked for traversal and encodings, see :mod:`gateway.core.paths`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.core.classification import ClassificationPolicy
from gateway.core.identifiers import id_syntax
from gateway.core.jsonlimits import RECORD_MAX_NAMES

MiB = 1024 * 1024
DEFAULT_LABELS = ClassificationPolicy()  # C2 unless the upstream says otherwise
_PARAM_VALUE = "[A-Za-z0-9._-]{1,64}"  # a path parameter's value, whole


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """Where the resource id sits in the request."""

    kind: str
    source: str  # "path" | "query" | "body"
    name: str


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """Where record ids sit in the response body.

    ``items``: key of the list of records (``None``: the body is one record).
    ``id_field``: field holding the record's resource id of kind ``kind``.
    ``at_field``: timestamp field; the relation must hold at that instant
    (meter ownership changes over time). Without it, the relation must hold now.
    ``window_field``: timestamp field that must fall inside the request window.
    ``same_as_request``: the record must be the resource that was asked for.
    """

    kind: str
    id_field: str
    items: str | None = None
    at_field: str | None = None
    window_field: str | None = None
    same_as_request: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    upstream: str
    method: str
    template: str
    # tenant kind -> relation names that grant access (D6: need to know).
    grants: Mapping[str, frozenset[str]]
    resource: ResourceRef | None = None
    records: tuple[RecordCheck, ...] = ()
    # "history": from/to query window, capped at three years (D4);
    # "date": one day (query ``date``), relation must hold on that day.
    window: str | None = None
    # Relations whose own validity bounds the data window (D2: a supplier sees
    # readings only inside its contract).
    window_bound: frozenset[str] = frozenset()
    required_role: str | None = None
    # A tenant flag the caller must carry (the HES serves its consortium only).
    member_of: str | None = None
    field_rules: tuple[str, ...] = ()
    # D11: the label to assume and who may receive C3/C4 answers.
    classification: ClassificationPolicy = DEFAULT_LABELS
    # D8: a sensitive consultation needs a declared purpose and a reference,
    # and is written to the consultation register.
    sensitive: bool = False
    # After a successful answer, tell others (e.g. "cmh-status": the coordinator).
    notify: str | None = None
    # D5: a remote operation on a meter, refused in airplane mode (core.meters).
    meter_operation: bool = False
    max_body_bytes: int = 1 * MiB
    segments: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # decide()'s fast path, worked out once: for a route whose resource id is a
    # path parameter and that reads no data window, (resource kind, parameter
    # name, the kind's id syntax check); None for any other route.
    path_resource: tuple[str, str, Callable[[str], object]] | None = field(
        init=False, repr=False, compare=False)
    # The response check's fast path, worked out once: for a route whose
    # answer is one record of which the check reads only top-level strings
    # (every record check without ``items``, no field rule, nothing to
    # notify), the names of those members; None for any other route.
    record_fields: tuple[str, ...] | None = field(init=False, repr=False, compare=False)
    # The same for a list answer: for a route of one record check with
    # ``items`` (no field rule, nothing to notify), that member's name and
    # the names read of each of its records; None for any other route.
    listed_fields: tuple[str, tuple[str, ...]] | None = field(
        init=False, repr=False, compare=False)
    # The route template: the only path-like metric label (bounded). A slot,
    # not a property: it is read twice on every request.
    name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.template.strip("/").split("/")))
        object.__setattr__(self, "name", self.template)
        ref = self.resource
        fast = None
        if ref is not None and ref.source == "path" and self.window is None:
            fast = (ref.kind, ref.name, id_syntax(ref.kind))
        object.__setattr__(self, "path_resource", fast)
        fields = listed = None
        if not self.field_rules and self.notify is None:
            if all(rc.items is None for rc in self.records):
                fields = _read_names(self.records)
            elif len(self.records) == 1 and (names := _read_names(self.records)) is not None:
                listed = (self.records[0].items, names)
        object.__setattr__(self, "record_fields", fields)
        object.__setattr__(self, "listed_fields", listed)


def _read_names(records: tuple[RecordCheck, ...]) -> tuple[str, ...] | None:
    """The fields the response check reads of a record, each once; None
    where they are more than record_strings reads (the full parse then)."""
    named = (n for rc in records for n in (rc.id_field, rc.at_field, rc.window_field))
    fields = tuple(dict.fromkeys(n for n in named if n is not None))
    return fields if len(fields) <= RECORD_MAX_NAMES else None


class RouteMatch(NamedTuple):  # built per request: a tuple is cheaper
    route: Route
    params: Mapping[str, str]


class PathMatch(NamedTuple):  # built per request: a tuple is cheaper
    """Result of a lookup: a match, or why there is none."""

    match: RouteMatch | None
    # Methods that exist for this path (for 405 + Allow), empty if no path.
    allowed_methods: tuple[str, ...] = ()


class RouteTable:
    """All routes, indexed by (first segment, number of segments); within a
    bucket each route is tried with one pattern of its whole template."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        index: dict[tuple[str, int], list[tuple[Route, re.Pattern[str]]]] = {}
        for route in self.routes:
            index.setdefault((route.segments[0], len(route.segments)), []).append(
                (route, _template_pattern(route.segments)))
        self._index = {key: tuple(val) for key, val in index.items()}

    def lookup(self, method: str, path: str) -> PathMatch:
        path = path.strip("/")
        candidates = self._index.get((path.partition("/")[0], path.count("/") + 1), ())
        methods: list[str] = []
        for route, pattern in candidates:
            bound = pattern.fullmatch(path)
            if bound is None:
                continue
            if route.method == method:
                # Built in C: a named tuple's own constructor is a Python frame.
                return _new(PathMatch, (_new(RouteMatch, (route, bound.groupdict())), ()))
            methods.append(route.method)
        return _new(PathMatch, (None, tuple(sorted(set(methods)))))


_new = tuple.__new__


def _template_pattern(segments: tuple[str, ...]) -> re.Pattern[str]:
    """The template's segments joined by ``/``: a literal segment matches
    itself exactly, a ``{name}`` segment one parameter value (a group of that
    name), so a parameter never takes a ``/`` or an empty segment."""
    return re.compile("/".join(
        f"(?P<{seg[1:-1]}>{_PARAM_VALUE})" if seg.startswith("{") else re.escape(seg)
        for seg in segments))
