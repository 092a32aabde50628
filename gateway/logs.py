"""The process's log: where records go and how they look (``[log] format``).

- ``text`` (the default): one line per record on stderr,
  ``TIME LEVEL LOGGER: MESSAGE key=value ...``.
- ``json``: one JSON object per record on stdout (python-json-logger), for a
  log collector: ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``,
  ``message``, ``exc_info`` when there is one, and the record's fields.

A record's fields are what its call passes as ``extra``: a record that
concerns a request carries its ``incident`` (the id of its audit event and
problem document), and the access log's lines (logger ``gateway.access``,
``[log] access``) carry only the fields listed in ``ACCESS_FIELDS``. In text
they follow the message as ``key=value``; in JSON they are keys of their own.

This is the operator's log, not the audit log: nothing here is signed or
chained, and no record holds a resource id, a query string or a payload.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("text", "json")
ACCESS_LOGGER = "gateway.access"
# What one access line says about a request, in this order; nothing else.
ACCESS_FIELDS = ("incident", "tenant", "method", "route", "upstream", "status", "reason",
                 "duration_ms", "bytes_in", "bytes_out")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The attributes every LogRecord has (and those formatting adds): the rest
# came from ``extra`` and are the record's fields.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given (``extra``), in the order given."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """The classic line, then the record's fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = fields(record)
        if not extra:
            return line
        head, sep, trace = line.partition("\n")  # a traceback stays below the line
        pairs = " ".join(f"{k}={v}" for k, v in extra.items())
        return f"{head} {pairs}{sep}{trace}"


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        reserved_attrs=sorted(_STANDARD), timestamp=True)


def configure(log_format: str = "text", *, verbose: bool = False) -> None:
    """Send the process's records to stderr as text or to stdout as JSON
    (called at start, and again once ``gateway serve`` has read its
    configuration: the handler set up before is replaced). A root logger
    with handlers of someone else's (a program running the gateway's CLI
    in-process, a test runner) is left alone, as ``logging.basicConfig``
    leaves it."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if len(ours) != len(root.handlers):
        return
    for old in ours:
        root.removeHandler(old)
    handler = _Handler(sys.stdout if log_format == "json" else sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs (and may replace)."""
