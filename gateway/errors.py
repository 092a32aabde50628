"""Exceptions of the gateway, split by who is at fault (STYLE.md, "Errors").

::

    GatewayError
    ├── ConfigError      bad configuration or tenant file, at start-up
    ├── RequestRefused   the caller is at fault or not allowed (4xx)
    └── UpstreamFailed   the shared system failed or misbehaved (502/504)

Callers see a problem document with a status, a short title and an incident
id; the precise ``reason`` goes to the audit event and a metric label only.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """Configuration that cannot be used; the message names file and key."""


class RequestRefused(GatewayError):
    def __init__(self, status: int, reason: str, *, headers: dict[str, str] | None = None,
                 detail: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
        self.detail = detail  # shown to the caller instead of the default (a limit's value)


class UpstreamFailed(GatewayError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
