"""The retention rules, pure: when a thing kept since ``at`` is due for
deletion, from the configured period of its category."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.config import RetentionConfig

DEAD_LETTERS = "dead-letter-payloads"
PRINCIPALS = "disabled-principals"
CONSULTATIONS = "consultations"
NOTIFICATIONS = "notifications"
CATEGORIES = (DEAD_LETTERS, PRINCIPALS, CONSULTATIONS, NOTIFICATIONS)


@dataclass(frozen=True, slots=True)
class Rule:
    """One category's period: kept ``days`` from its moment, then due."""

    category: str
    key: str  # the [retention] key that sets it
    days: float

    @property
    def policy(self) -> str:
        return f"{self.key}={self.days:g}"

    def due_at(self, at: datetime) -> datetime:
        return at + timedelta(days=self.days)

    def cutoff(self, now: datetime) -> datetime:
        """Everything at or before this moment is due at ``now``."""
        return now - timedelta(days=self.days)

    def is_due(self, at: datetime, now: datetime) -> bool:
        return self.due_at(at) <= now


def rules(config: RetentionConfig) -> dict[str, Rule]:
    return {
        DEAD_LETTERS: Rule(DEAD_LETTERS, "dead_letter_payload_days",
                           config.dead_letter_payload_days),
        PRINCIPALS: Rule(PRINCIPALS, "disabled_principal_days", config.disabled_principal_days),
        CONSULTATIONS: Rule(CONSULTATIONS, "consultation_register_days",
                            config.consultation_register_days),
        NOTIFICATIONS: Rule(NOTIFICATIONS, "notification_days", config.notification_days),
    }
