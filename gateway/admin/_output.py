"""How the admin verbs show what the admin plane answered.

A listing (``certs list``, ``certs pending``, ``keys list``, ``vault list``,
``breakglass list``, ``usage``) is an aligned table on a terminal and the
admin API's JSON document when piped or with ``--json``
(:func:`gateway.console.wants_json`). The exports (``review``, ``review --lockbox``,
``consultations``) are a table on a terminal too, unless a ``--format`` or
an ``--out`` file is asked for; piped, they stay CSV. A verb that writes a file says on
stderr what it wrote, so stdout stays the document a script reads.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.console import Column, age, every, is_terminal, progress, table, wants_json


def _principal(row: Mapping[str, Any]) -> str:
    return f"{row['tenant']}/{row['kind']}/{row['name']}"


def _when(key: str) -> Any:
    return lambda row: (row.get(key) or "")[:19].replace("T", " ")


# listing key in the API's document -> its columns on a terminal
LISTINGS: dict[str, Sequence[Column]] = {
    "certificates": (("SERIAL", lambda r: r["serial"]), ("PRINCIPAL", _principal),
                     ("STATUS", lambda r: r["status"]), ("NOT AFTER", _when("not_after")),
                     ("RETIRE AT", _when("retire_at")), ("REVOKED", _when("revoked_at"))),
    "pending": (("ID", lambda r: r["id"]), ("ACTION", lambda r: r["action"]),
                ("TARGET", lambda r: r["target"]), ("STATUS", lambda r: r["status"]),
                ("REQUESTED BY", lambda r: r["requested_by"]),
                ("EXPIRES", _when("expires_at"))),
    "keys": (("KID", lambda r: r["kid"]), ("SIGNING", lambda r: r["signing"]),
             ("CREATED", _when("created")), ("ACTIVATE AT", _when("activate_at")),
             ("UNPUBLISH AT", _when("unpublish_at"))),
    "secrets": (("ID", lambda r: r["id"]), ("VERSION", lambda r: r["version"]),
                ("KIND", lambda r: r["kind"]), ("AGE", lambda r: age(r.get("age_s"))),
                ("CREATED", _when("created"))),
    "cases": (("CASE", lambda r: r["id"]), ("ACCOUNT", lambda r: r["account"]),
              ("STATUS", lambda r: r["status"]), ("REQUESTER", lambda r: r["requester"]),
              ("APPROVER", lambda r: r["approver"]), ("TICKET", lambda r: r["ticket"]),
              ("REVIEW", lambda r: r["review_status"]),
              ("CLOSE REASON", lambda r: r["close_reason"])),
    "principals": (("PRINCIPAL", lambda r: f"{r['tenant']}/{r['principal_kind']}/"
                                          f"{r['principal']}"),
                   ("TEAM", lambda r: r["team"]), ("ROLES", lambda r: " ".join(r["roles"])),
                   ("DISABLED", lambda r: r["disabled"]),
                   ("ACTIVE CERTS", lambda r: sum(c["status"] == "active"
                                                  for c in r["certificates"])),
                   ("LAST USED", _when("last_used")),
                   ("TWO-PERSON", lambda r: len(r["two_person"]))),
    "lockbox": (("CASE", lambda r: r["case_id"]), ("TENANT", lambda r: r["tenant"]),
                ("ACCOUNT", lambda r: r["account"]), ("MODE", lambda r: r["mode"]),
                ("STATUS", lambda r: r["status"]), ("APPROVER", lambda r: r["approver"]),
                ("REVIEW", lambda r: r["review_status"]),
                ("REQUESTER", lambda r: r["requester"]), ("TICKET", lambda r: r["ticket"]),
                ("APPROVE BY", _when("expires_at"))),
    "consultations": (("AT", _when("at")), ("TENANT", lambda r: r["tenant"]),
                      ("PRINCIPAL", lambda r: r["principal"]), ("ROUTE", lambda r: r["route"]),
                      ("PURPOSE", lambda r: r["purpose"]),
                      ("JUSTIFICATION", lambda r: r["justification"]),
                      ("INCIDENT", lambda r: r["incident"])),
    "rows": (("START", lambda r: r["start"]), ("TENANT", lambda r: r["tenant"]),
             ("UPSTREAM", lambda r: r["upstream"]), ("ROUTE", lambda r: r["route"]),
             ("REQUESTS", lambda r: r["requests"]), ("DENIED", lambda r: r["denied"]),
             ("BYTES IN", lambda r: r["bytes_in"]), ("BYTES OUT", lambda r: r["bytes_out"])),
}


def show_listing(doc: dict[str, Any], key: str, *, as_json: bool) -> None:
    """Print one listing of the admin API: JSON (piped, ``--json``) or a table."""
    if wants_json(as_json):
        print(json.dumps(doc, indent=1))
        return
    rows = doc.get(key) or []
    if not rows:
        print(f"(no {key})")
        return
    print(table(rows, LISTINGS[key]))


def rows_in(payload: bytes, fmt: str) -> int:
    """How many rows an export holds: CSV records after the heading, or the
    length of the JSON document's one list."""
    if fmt == "csv":
        return max(0, sum(1 for _ in csv.reader(io.StringIO(payload.decode()))) - 1)
    doc = json.loads(payload)
    lists = [v for v in doc.values() if isinstance(v, list)] if isinstance(doc, dict) else []
    return len(lists[0]) if lists else 0


def wrote(what: str, path: str | Path) -> None:
    """Say on stderr what a verb wrote where (stdout stays the document)."""
    print(f"wrote {what} to {path}", file=sys.stderr)


def _rekey_state(call: Callable[..., tuple[int, bytes]],
                 args: argparse.Namespace) -> tuple[int, int] | None:
    """(data keys re-wrapped, of how many) of the rekey running now, if known."""
    try:
        status, payload = call(args, "GET", "/admin/vault/rekey")
        doc = json.loads(payload) if status == 200 else {}
    except (OSError, ValueError):
        return None  # the bar is a courtesy: the rekey call itself decides
    return (int(doc["done"]), int(doc["total"])) if doc.get("total") else None


@contextlib.contextmanager
def rekey_bar(call: Callable[..., tuple[int, bytes]], args: argparse.Namespace,
              what: str) -> Iterator[None]:
    """While a rekey runs on the admin plane: on a terminal, a bar of the data
    keys re-wrapped so far (``GET /admin/vault/rekey``, twice a second);
    piped or redirected, nothing."""
    if not is_terminal(sys.stderr):
        yield
        return
    with progress(None, what, unit="keys") as bar:
        def poll() -> None:
            state = _rekey_state(call, args)
            if state is not None:
                bar.reached(*state)

        with every(0.5, poll):
            yield
