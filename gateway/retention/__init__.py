"""Retention (D8, D10; GDPR data minimisation): what the gateway keeps about
people is deleted once its purpose is served, never silently.

- ``dead-letter-payloads``: a dead letter's payload is kept
  ``[retention] dead_letter_payload_days`` (30) after it died, then erased;
  the row stays as a tombstone (tenant, source, batch, records, error, when).
- ``disabled-principals``: a disabled principal's state is kept
  ``disabled_principal_days`` (400, past the six-monthly reviews) after it
  was disabled, then deleted with its last-seen time, once it is no longer
  declared in tenants/. While it is, that row is what keeps it refused: it
  is held (and reported), never deleted.
- ``consultations``: a consultation-register entry is kept
  ``consultation_register_days`` (610, 20 months) after the consultation,
  then deleted.
- ``notifications``: a tenant's notification (``GET /notifications``) is kept
  ``notification_days`` (400) after it was made, then deleted; the incident
  stays known, so it is never notified again, and its audit event stays.

Each deletion is first recorded as a ``retention`` audit event (a run that
cannot write it deletes nothing) and counted in
``gateway_retention_deleted_total{category}``. :class:`Retention` runs as a
control duty of the running gateway (the only process, or the fleet's
active control plane) and is idempotent; ``gateway retention report``
(:func:`add_parsers`) prints what would go and when, deleting nothing.

May import: :mod:`gateway.push`, :mod:`gateway.state`, :mod:`gateway.audit`,
:mod:`gateway.config`, :mod:`gateway.tenants`, :mod:`gateway.metrics`,
:mod:`gateway.errors`.
"""

from __future__ import annotations

from gateway.retention._cli import add_parsers
from gateway.retention._duty import CategoryReport, Retention, RetentionItem, RetentionReport
from gateway.retention._policy import CATEGORIES, Rule, rules

__all__ = [
    "CATEGORIES",
    "CategoryReport",
    "Retention",
    "RetentionItem",
    "RetentionReport",
    "Rule",
    "add_parsers",
    "rules",
]
