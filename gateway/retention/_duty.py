"""The retention duty (see the package's docstring): a report of what is
due, and the deletion itself, each category recorded in the audit log before
anything of it goes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.audit import AuditSink, RetentionEvent
from gateway.clock import utc_now
from gateway.config import RetentionConfig
from gateway.metrics import GatewayMetrics
from gateway.problem import new_incident_id
from gateway.push import Outbox
from gateway.retention._policy import (
    CONSULTATIONS,
    DEAD_LETTERS,
    NOTIFICATIONS,
    PRINCIPALS,
    Rule,
    rules,
)
from gateway.state import PrincipalKey, StateStore

log = logging.getLogger("gateway.retention")
_REVIEWED = "a review saw it; the purpose is served (GDPR data minimisation)"


@dataclass(frozen=True, slots=True)
class RetentionItem:
    """One thing named in the report: a dead letter or a disabled principal."""

    name: str  # the part id, or "tenant/kind/name"
    at: datetime  # when it died, or was disabled
    due_at: datetime
    status: str  # due (goes at the next run), waiting, held (still declared in tenants/)


@dataclass(frozen=True, slots=True)
class CategoryReport:
    category: str
    policy: str  # "<key>=<days>"
    kept: int  # what the rule applies to now
    due: int  # would be deleted by a run now
    oldest: datetime | None
    oldest_due_at: datetime | None
    held: int = 0
    items: tuple[RetentionItem, ...] = ()


@dataclass(frozen=True, slots=True)
class RetentionReport:
    now: datetime
    categories: tuple[CategoryReport, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, object]:
        def t(at: datetime | None) -> str | None:
            return None if at is None else at.isoformat()

        return {"now": t(self.now), "categories": [
            {"category": c.category, "policy": c.policy, "kept": c.kept, "due": c.due,
             "held": c.held, "oldest": t(c.oldest), "oldest_due_at": t(c.oldest_due_at),
             "items": [{"name": i.name, "at": t(i.at), "due_at": t(i.due_at),
                        "status": i.status} for i in c.items]}
            for c in self.categories]}


class Retention:
    """Built with what it deletes from: the state store, the outbox (None
    where no pushed data is configured), which principals tenants/ declares
    now, and the audit log and metrics deletions are recorded in."""

    def __init__(self, *, store: StateStore, outbox: Outbox | None,
                 declared: Callable[[PrincipalKey], bool], config: RetentionConfig,
                 audit: AuditSink | None = None, metrics: GatewayMetrics | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.outbox = outbox
        self.declared = declared
        self.rules = rules(config)
        self.audit = audit
        self.metrics = metrics
        self.clock = clock
        self._held_logged: set[PrincipalKey] = set()

    # -- the report (reads only) ---------------------------------------------------
    def report(self) -> RetentionReport:
        now = self.clock()
        return RetentionReport(now, (self._dead_letters_report(now),
                                     self._principals_report(now),
                                     self._consultations_report(now),
                                     self._notifications_report(now)))

    def _dead_letters_report(self, now: datetime) -> CategoryReport:
        rule = self.rules[DEAD_LETTERS]
        kept = [d for d in (self.outbox.dead_letters() if self.outbox else [])
                if d.payload_kept]
        items = tuple(RetentionItem(d.part.id, d.died_at, rule.due_at(d.died_at),
                                    "due" if rule.is_due(d.died_at, now) else "waiting")
                      for d in kept)
        return _category(rule, items)

    def _principals_report(self, now: datetime) -> CategoryReport:
        rule = self.rules[PRINCIPALS]
        items = []
        for state in sorted((s for s in self.store.principal_states() if s.disabled),
                            key=lambda s: (s.changed_at, s.key)):
            status = "waiting"
            if rule.is_due(state.changed_at, now):
                status = "held" if self.declared(state.key) else "due"
            items.append(RetentionItem("/".join(state.key), state.changed_at,
                                       rule.due_at(state.changed_at), status))
        return _category(rule, tuple(items))

    def _consultations_report(self, now: datetime) -> CategoryReport:
        rule = self.rules[CONSULTATIONS]
        kept, oldest = self.store.consultation_span()
        due, _ = self.store.consultation_span(before=rule.cutoff(now))
        return CategoryReport(CONSULTATIONS, rule.policy, kept, due, oldest,
                              None if oldest is None else rule.due_at(oldest))

    def _notifications_report(self, now: datetime) -> CategoryReport:
        rule = self.rules[NOTIFICATIONS]
        if self.outbox is None:
            return CategoryReport(NOTIFICATIONS, rule.policy, 0, 0, None, None)
        kept, oldest = self.outbox.notification_span()
        due, _ = self.outbox.notification_span(before=rule.cutoff(now))
        return CategoryReport(NOTIFICATIONS, rule.policy, kept, due, oldest,
                              None if oldest is None else rule.due_at(oldest))

    # -- the deletion (the control duties) -------------------------------------------
    def enforce(self) -> dict[str, int]:
        """Delete what is due now, each category recorded first; how many of
        each went. Idempotent: run again, it deletes nothing and records
        nothing. An audit log that cannot be written stops it before the
        deletion it would have recorded."""
        now = self.clock()
        done = {DEAD_LETTERS: self._erase_dead_letters(now),
                PRINCIPALS: self._delete_principals(now),
                CONSULTATIONS: self._delete_consultations(now),
                NOTIFICATIONS: self._delete_notifications(now)}
        for category, count in done.items():
            if count and self.metrics is not None:
                self.metrics.retention_deleted.labels(category).inc(count)
        if any(done.values()):
            log.info("retention deleted %s", ", ".join(f"{n} {c}" for c, n in done.items()))
        return done

    def _record(self, event: RetentionEvent) -> None:
        if self.audit is not None:
            self.audit.record(event)

    def _erase_dead_letters(self, now: datetime) -> int:
        if self.outbox is None:
            return 0
        rule = self.rules[DEAD_LETTERS]
        due = [d for d in self.outbox.dead_letters()
               if d.payload_kept and rule.is_due(d.died_at, now)]
        if not due:
            return 0
        cutoff = rule.cutoff(now)
        self._record(RetentionEvent(
            new_incident_id(), DEAD_LETTERS, len(due), min(d.died_at for d in due).timestamp(),
            cutoff.timestamp(), rule.policy,
            "dead letter kept past its period: payload erased, tombstone kept",
            parts=tuple(d.part.id for d in due), records=sum(d.part.records for d in due)))
        return self.outbox.erase_dead_payloads([d.part.id for d in due], cutoff)

    def _delete_principals(self, now: datetime) -> int:
        rule = self.rules[PRINCIPALS]
        deleted = 0
        for state in self.store.principal_states():
            if not state.disabled or not rule.is_due(state.changed_at, now):
                continue
            if self.declared(state.key):
                # SECURITY: while tenants/ declares it, this row is what keeps
                # the principal refused: deleting it would enable it again.
                if state.key not in self._held_logged:
                    self._held_logged.add(state.key)
                    log.warning("retention: %s is disabled since %s but still declared in "
                                "tenants/: its state is kept until it is removed there",
                                "/".join(state.key), state.changed_at.isoformat())
                continue
            self._record(RetentionEvent(
                new_incident_id(), PRINCIPALS, 1, state.changed_at.timestamp(),
                rule.cutoff(now).timestamp(), rule.policy,
                f"disabled longer than {rule.days:g} days and no longer declared in "
                f"tenants/; {_REVIEWED}",
                principal="/".join(state.key), disabled_by=state.changed_by))
            deleted += self.store.delete_principal_state(state)
        return deleted

    def _delete_consultations(self, now: datetime) -> int:
        return self._delete_older(CONSULTATIONS, now, self.store.consultation_span,
                                  self.store.delete_consultations, _REVIEWED)

    def _delete_notifications(self, now: datetime) -> int:
        if self.outbox is None:
            return 0
        return self._delete_older(NOTIFICATIONS, now, self.outbox.notification_span,
                                  self.outbox.delete_notifications,
                                  "for the tenant to read; each one's audit event stays")

    def _delete_older(self, category: str, now: datetime,
                      span: Callable[..., tuple[int, datetime | None]],
                      delete: Callable[..., int], why: str) -> int:
        """A register kept for its period, then deleted at once: counted,
        recorded (count and oldest, never an entry), then deleted."""
        rule = self.rules[category]
        cutoff = rule.cutoff(now)
        count, oldest = span(before=cutoff)
        if not count or oldest is None:
            return 0
        self._record(RetentionEvent(
            new_incident_id(), category, count, oldest.timestamp(), cutoff.timestamp(),
            rule.policy, f"kept {rule.days:g} days; {why}"))
        return int(delete(before=cutoff))

def _category(rule: Rule, items: tuple[RetentionItem, ...]) -> CategoryReport:
    oldest = min((i.at for i in items), default=None)
    return CategoryReport(rule.category, rule.policy, len(items),
                          sum(i.status == "due" for i in items), oldest,
                          None if oldest is None else rule.due_at(oldest),
                          sum(i.status == "held" for i in items), items)
