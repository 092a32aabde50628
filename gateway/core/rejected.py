"""How the core says no: one exception base for every refusal a pure
decision makes (a request target, a header, a pushed batch, a booking, a
transition, a JSON document, a snapshot).

``reason`` is the stable code that goes to the audit event, the metric label
and the problem document's ``reason``; ``status`` is the HTTP status the
caller should see where the refusal reaches one (400 unless the rule says
otherwise); ``detail`` says what exactly is wrong, for the log or an admin.
The boundary turns it into the gateway's own refusal in one place
(:meth:`gateway.errors.RequestRefused.from_core`); the core itself knows no
HTTP and imports nothing of the gateway.
"""

from __future__ import annotations


class Rejected(Exception):
    """A pure decision refused its input."""

    status: int = 400

    def __init__(self, reason: str, detail: str | None = None, *,
                 status: int | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail
        if status is not None:
            self.status = status
