"""Time-bounded relation tuples and their in-memory index (DESIGN.md §4).

The index is built once from the authoritative feed (access register, HES
inventory; in the demo a generated dataset) and swapped as a whole on reload,
so a request always sees one consistent snapshot. Lookups are dict hits.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.core.model import Relation

# Pseudo resource kind: ("tenant", id) has relation "self" for tenant == id.
TENANT_KIND = "tenant"


def parse_instant(value: str | None) -> datetime | None:
    """Parse an ISO 8601 date or date-time into an aware UTC datetime."""
    if value is None:
        return None
    if len(value) == 10:  # a plain date means its midnight UTC
        value = value + "T00:00:00+00:00"
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


class RelationIndex:
    """An immutable snapshot of relation tuples keyed by ``(kind, resource id)``."""

    __slots__ = ("_by_resource", "_count")

    def __init__(self, relations: Iterable[Relation]) -> None:
        grouped: dict[tuple[str, str], list[Relation]] = defaultdict(list)
        count = 0
        for rel in relations:
            grouped[(rel.kind, rel.resource_id)].append(rel)
            count += 1
        self._by_resource: Mapping[tuple[str, str], tuple[Relation, ...]] = {
            key: tuple(rels) for key, rels in grouped.items()
        }
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Relation]:
        for rels in self._by_resource.values():
            yield from rels

    def of(self, kind: str, resource_id: str) -> tuple[Relation, ...]:
        return self._by_resource.get((kind, resource_id), ())

    def find(
        self,
        kind: str,
        resource_id: str,
        tenant: str,
        names: frozenset[str],
        at: datetime,
    ) -> Relation | None:
        """The first relation of ``tenant`` on the resource, named in ``names``,
        that holds at instant ``at``; ``None`` when there is none."""
        if kind == TENANT_KIND:
            if resource_id == tenant and "self" in names:
                return Relation(TENANT_KIND, resource_id, tenant, "self")
            return None
        for rel in self._by_resource.get((kind, resource_id), ()):
            if rel.tenant == tenant and rel.relation in names and rel.holds_at(at):
                return rel
        return None

    def find_during(
        self,
        kind: str,
        resource_id: str,
        tenant: str,
        names: frozenset[str],
        start: datetime,
        end: datetime,
    ) -> Relation | None:
        """The first matching relation that holds at some instant of ``[start, end)``
        (a meter that changed owner during the day belongs to both owners that
        day, each for its own part: the records are checked one by one)."""
        for rel in self._by_resource.get((kind, resource_id), ()):
            if rel.tenant != tenant or rel.relation not in names:
                continue
            if (rel.valid_from is None or rel.valid_from < end) and (
                rel.valid_to is None or rel.valid_to > start
            ):
                return rel
        return None

    def holders(self, kind: str, resource_id: str, relation: str, at: datetime) -> set[str]:
        """Tenants holding ``relation`` on the resource at ``at``."""
        return {
            rel.tenant
            for rel in self._by_resource.get((kind, resource_id), ())
            if rel.relation == relation and rel.holds_at(at)
        }

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> RelationIndex:
        return cls(
            Relation(
                kind=str(rec["kind"]),
                resource_id=str(rec["id"]),
                tenant=str(rec["tenant"]),
                relation=str(rec["relation"]),
                valid_from=parse_instant(rec.get("valid_from")),
                valid_to=parse_instant(rec.get("valid_to")),
            )
            for rec in records
        )

    @classmethod
    def load(cls, path: Path) -> RelationIndex:
        """Load ``{"relations": [...]}`` written by the feed (or the demo dataset)."""
        with path.open("rb") as fh:
            doc = json.load(fh)
        return cls.from_records(doc["relations"])


def relation_record(rel: Relation) -> dict[str, Any]:
    """The JSON form of a relation, the inverse of :meth:`RelationIndex.from_records`."""
    return {
        "kind": rel.kind,
        "id": rel.resource_id,
        "tenant": rel.tenant,
        "relation": rel.relation,
        "valid_from": rel.valid_from.isoformat() if rel.valid_from else None,
        "valid_to": rel.valid_to.isoformat() if rel.valid_to else None,
    }
