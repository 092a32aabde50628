"""What both SQL backends share: the queries of :class:`StateStore`, written
once with ``?`` placeholders. A backend says how to run a statement, how a
row becomes a record, how a counter moves and how a batch is written."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeVar

from gateway.state._records import (
    BreakGlassCase,
    CaRecord,
    CertificateRecord,
    Consultation,
    LockboxEntry,
    NrnApproval,
    PendingAction,
    PrincipalKey,
    PrincipalState,
    SigningKeyRecord,
)

R = TypeVar("R")
# The primary key of each table an upsert writes.
KEYS = {"certificates": ("serial",), "principal_states": ("tenant", "kind", "name"),
        "cas": ("id",), "breakglass": ("id",), "consultations": ("incident",),
        "signing_keys": ("kid",), "pending_actions": ("id",), "nrn_approvals": ("id",),
        "lockbox": ("case_id", "tenant")}


class SqlStore(ABC):
    """The shared queries; a backend implements the hooks below."""

    # -- the backend's hooks -----------------------------------------------------
    @abstractmethod
    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """Run one statement (``?`` placeholders); a cursor with rowcount and
        fetchone/fetchall of rows addressable by column name."""

    @abstractmethod
    def _record(self, cls: type[R], row: Mapping[str, Any]) -> R:
        """A row as the record ``cls``."""

    @abstractmethod
    def _time(self, value: Any) -> datetime:
        """A stored time as an aware datetime."""

    @abstractmethod
    def _changed(self) -> None:
        """Announce a write of what the request path checks (change_seq)."""

    # -- shared --------------------------------------------------------------------
    def _insert(self, table: str, rec: Any) -> None:
        names = [f.name for f in fields(rec)]
        if table == "principal_states":
            names = ["tenant", "kind", "name", *names[1:]]
            values = [*rec.key, *(getattr(rec, n) for n in names[3:])]
        else:
            values = [getattr(rec, n) for n in names]
        keys = KEYS[table]
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in keys)
        self._exec(f"INSERT INTO {table} ({', '.join(names)}) "  # noqa: S608
                   f"VALUES ({', '.join('?' for _ in names)}) "
                   f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}", tuple(values))

    def _records(self, cls: type[R], sql: str, args: tuple[Any, ...] = ()) -> list[R]:
        return [self._record(cls, r) for r in self._exec(sql, args).fetchall()]

    def _one(self, cls: type[R], sql: str, args: tuple[Any, ...]) -> R | None:
        row = self._exec(sql, args).fetchone()
        return self._record(cls, row) if row else None

    # -- certificates ----------------------------------------------------------
    def add_certificate(self, rec: CertificateRecord) -> None:
        self._insert("certificates", rec)

    def certificate(self, serial: str) -> CertificateRecord | None:
        return self._one(CertificateRecord, "SELECT * FROM certificates WHERE serial = ?",
                         (serial,))

    def certificates(self, *, principal: PrincipalKey | None = None,
                     status: str | None = None) -> list[CertificateRecord]:
        sql, args = "SELECT * FROM certificates WHERE 1 = 1", list[Any]()
        if principal is not None:
            sql += " AND tenant = ? AND kind = ? AND name = ?"
            args += list(principal)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        return self._records(CertificateRecord, sql + " ORDER BY issued_at, serial", tuple(args))

    def revoke_certificate(self, serial: str, reason: str, at: datetime) -> bool:
        cur = self._exec("UPDATE certificates SET status = 'revoked', revoked_at = ?, "
                         "revoke_reason = ?, retire_at = NULL "
                         "WHERE serial = ? AND status = 'active'", (at, reason, serial))
        if cur.rowcount == 1:
            self._changed()
        return bool(cur.rowcount == 1)

    def schedule_retirement(self, serial: str, at: datetime) -> None:
        self._exec("UPDATE certificates SET retire_at = ? WHERE serial = ?", (at, serial))

    def due_retirements(self, now: datetime) -> list[CertificateRecord]:
        return self._records(CertificateRecord,
                             "SELECT * FROM certificates WHERE status = 'active' AND "
                             "retire_at IS NOT NULL AND retire_at <= ?", (now,))

    # -- principals ------------------------------------------------------------
    def set_principal_state(self, state: PrincipalState) -> None:
        self._insert("principal_states", state)
        self._changed()

    def principal_states(self) -> list[PrincipalState]:
        rows = self._exec("SELECT * FROM principal_states").fetchall()
        return [PrincipalState((r["tenant"], r["kind"], r["name"]), bool(r["disabled"]),
                               self._time(r["changed_at"]), r["reason"], r["changed_by"])
                for r in rows]

    def delete_principal_state(self, state: PrincipalState) -> bool:
        """Retention (D8, D10): forget a disabled principal and its last-seen
        time, only while its stored state is still ``state`` (disabled, at
        the same moment): enabled or disabled again meanwhile, it stays.
        True when it was deleted."""
        if not state.disabled:
            raise ValueError("only a disabled principal's state is deleted by retention")
        cur = self._exec("DELETE FROM principal_states WHERE tenant = ? AND kind = ? AND "
                         "name = ? AND disabled = ? AND changed_at = ?",
                         (*state.key, True, state.changed_at))
        if cur.rowcount != 1:
            return False
        self._exec("DELETE FROM last_seen WHERE tenant = ? AND kind = ? AND name = ?",
                   state.key)
        self._changed()
        return True

    def last_seen(self) -> dict[PrincipalKey, datetime]:
        rows = self._exec("SELECT * FROM last_seen").fetchall()
        return {(r["tenant"], r["kind"], r["name"]): self._time(r["at"]) for r in rows}

    # -- certificate authorities -------------------------------------------
    def add_ca(self, rec: CaRecord) -> None:
        self._insert("cas", rec)
        self._changed()

    def cas(self) -> list[CaRecord]:
        return self._records(CaRecord, "SELECT * FROM cas ORDER BY created, id")

    def ca_certificates(self) -> list[CaRecord]:
        """The CAs without their keys (``key_pem`` empty): what a data-plane
        replica reads, whose database role may not read the keys."""
        rows = self._exec("SELECT id, cert_pem, created, status, retire_at FROM cas "
                          "ORDER BY created, id").fetchall()
        return [self._record(CaRecord, {**dict(r), "key_pem": ""}) for r in rows]

    def set_ca_status(self, ca_id: str, status: str, retire_at: datetime | None) -> None:
        self._exec("UPDATE cas SET status = ?, retire_at = ? WHERE id = ?",
                   (status, retire_at, ca_id))
        self._changed()

    def crls(self) -> list[tuple[str, bytes]]:
        rows = self._exec("SELECT ca_id, pem FROM crls ORDER BY position").fetchall()
        return [(r["ca_id"], bytes(r["pem"])) for r in rows]

    # -- break-glass cases ------------------------------------------------------
    def put_breakglass(self, case: BreakGlassCase) -> None:
        self._insert("breakglass", case)

    def breakglass(self, case_id: str) -> BreakGlassCase | None:
        return self._one(BreakGlassCase, "SELECT * FROM breakglass WHERE id = ?", (case_id,))

    def breakglass_cases(self, *, status: str | None = None) -> list[BreakGlassCase]:
        sql, args = "SELECT * FROM breakglass", tuple[str, ...]()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return self._records(BreakGlassCase, sql + " ORDER BY created, id", args)

    def move_breakglass(self, before: BreakGlassCase, after: BreakGlassCase) -> bool:
        """Store ``after`` only if the stored case is still ``before`` in its
        lifecycle: status, rotated flag, review status (every step changes
        one of them). One winner when two replicas move one case at once
        (D6, D7); the loser reads the case again."""
        if before.id != after.id:
            raise ValueError("a case moves to a record of the same case")
        names = [f.name for f in fields(after) if f.name != "id"]
        cur = self._exec(
            f"UPDATE breakglass SET {', '.join(n + ' = ?' for n in names)} "  # noqa: S608
            "WHERE id = ? AND status = ? AND rotated = ? AND review_status = ?",
            (*(getattr(after, n) for n in names), before.id, before.status, before.rotated,
             before.review_status))
        return bool(cur.rowcount == 1)

    # -- the tenant lockbox (D7) --------------------------------------------------
    def put_lockbox(self, entries: Sequence[LockboxEntry]) -> None:
        for entry in entries:
            self._insert("lockbox", entry)

    def lockbox(self, case_id: str, tenant: str) -> LockboxEntry | None:
        return self._one(LockboxEntry, "SELECT * FROM lockbox WHERE case_id = ? AND tenant = ?",
                         (case_id, tenant))

    def lockbox_entries(self, *, case_id: str | None = None, tenant: str | None = None
                        ) -> list[LockboxEntry]:
        where = [(n, v) for n, v in (("case_id", case_id), ("tenant", tenant)) if v is not None]
        sql = "SELECT * FROM lockbox" + (  # noqa: S608 (constant column names)
            " WHERE " + " AND ".join(f"{n} = ?" for n, _ in where) if where else "")
        return self._records(LockboxEntry, sql + " ORDER BY created, case_id, tenant",
                             tuple(v for _, v in where))

    def move_lockbox(self, before: LockboxEntry, after: LockboxEntry) -> bool:
        """Compare-and-set: ``after`` is stored only if the entry's status and
        review status are still ``before``'s (one decision when two replicas
        decide at once)."""
        if (before.case_id, before.tenant) != (after.case_id, after.tenant):
            raise ValueError("an entry moves to a record of the same entry")
        names = [f.name for f in fields(after) if f.name not in ("case_id", "tenant")]
        cur = self._exec(
            f"UPDATE lockbox SET {', '.join(n + ' = ?' for n in names)} "  # noqa: S608
            "WHERE case_id = ? AND tenant = ? AND status = ? AND review_status = ?",
            (*(getattr(after, n) for n in names), before.case_id, before.tenant,
             before.status, before.review_status))
        return bool(cur.rowcount == 1)

    # -- the consultation register (D8) ------------------------------------------
    def add_consultation(self, rec: Consultation) -> None:
        """Append-only (D8): a consultation once recorded is never rewritten
        (the same incident again changes nothing), so a replica's role needs
        INSERT only; only retention deletes, on the control plane."""
        names = [f.name for f in fields(rec)]
        self._exec(f"INSERT INTO consultations ({', '.join(names)}) "  # noqa: S608
                   f"VALUES ({', '.join('?' for _ in names)}) ON CONFLICT (incident) DO NOTHING",
                   tuple(getattr(rec, n) for n in names))

    def consultations(self, *, tenant: str | None = None) -> list[Consultation]:
        sql, args = "SELECT * FROM consultations", tuple[str, ...]()
        if tenant is not None:
            sql, args = sql + " WHERE tenant = ?", (tenant,)
        return self._records(Consultation, sql + " ORDER BY at, incident", args)

    # -- national-register lookup approvals (D8) -----------------------------------
    def add_nrn_approval(self, rec: NrnApproval) -> None:
        self._insert("nrn_approvals", rec)

    def nrn_approval(self, approval_id: str) -> NrnApproval | None:
        return self._one(NrnApproval, "SELECT * FROM nrn_approvals WHERE id = ?",
                         (approval_id,))

    def nrn_approvals(self, *, tenant: str | None = None) -> list[NrnApproval]:
        sql, args = "SELECT * FROM nrn_approvals", tuple[str, ...]()
        if tenant is not None:
            sql, args = sql + " WHERE tenant = ?", (tenant,)
        return self._records(NrnApproval, sql + " ORDER BY created, id", args)

    def decide_nrn_approval(self, approval_id: str, status: str, approver: str,
                            at: datetime) -> bool:
        """Approve or deny a pending request, once: False if it was decided already
        (two managers at once: one wins)."""
        cur = self._exec("UPDATE nrn_approvals SET status = ?, approver = ?, decided_at = ? "
                         "WHERE id = ? AND status = 'pending'",
                         (status, approver, at, approval_id))
        return bool(cur.rowcount == 1)

    def consultation_span(self, *, before: datetime | None = None
                          ) -> tuple[int, datetime | None]:
        """How many entries the register holds (those at or before ``before``)
        and the oldest one's time: what retention reports, without reading
        the entries."""
        sql, args = "SELECT count(*) AS n, min(at) AS oldest FROM consultations", tuple[Any, ...]()
        if before is not None:
            sql, args = sql + " WHERE at <= ?", (before,)
        row = self._exec(sql, args).fetchone()
        oldest = row["oldest"]
        return int(row["n"]), None if oldest is None else self._time(oldest)

    def delete_consultations(self, *, before: datetime) -> int:
        """Retention (D8, D10): the only deletion from the register: entries
        at or before ``before``. How many went; again, none."""
        cur = self._exec("DELETE FROM consultations WHERE at <= ?", (before,))
        return int(cur.rowcount)

    # -- signing keys --------------------------------------------------------
    def add_signing_key(self, rec: SigningKeyRecord) -> None:
        self._insert("signing_keys", rec)
        self._changed()

    def signing_keys(self) -> list[SigningKeyRecord]:
        return self._records(SigningKeyRecord,
                             "SELECT * FROM signing_keys ORDER BY activate_at, kid")

    def set_unpublish(self, kid: str, at: datetime) -> None:
        self._exec("UPDATE signing_keys SET unpublish_at = ? WHERE kid = ?", (at, kid))
        self._changed()

    def delete_signing_key(self, kid: str) -> None:
        self._exec("DELETE FROM signing_keys WHERE kid = ?", (kid,))
        self._changed()

    # -- actions pending a second admin (D6) ------------------------------------
    def put_pending(self, rec: PendingAction) -> None:
        self._insert("pending_actions", rec)

    def pending(self, pending_id: str) -> PendingAction | None:
        return self._one(PendingAction, "SELECT * FROM pending_actions WHERE id = ?",
                         (pending_id,))

    def pending_actions(self, *, status: str | None = None) -> list[PendingAction]:
        sql, args = "SELECT * FROM pending_actions", tuple[str, ...]()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return self._records(PendingAction, sql + " ORDER BY created, id", args)

    def move_pending(self, pending_id: str, from_status: str, rec: PendingAction) -> bool:
        """Store ``rec`` only if the item is still ``from_status`` (one winner
        when two admins decide at once, on any replica)."""
        names = [f.name for f in fields(rec) if f.name != "id"]
        cur = self._exec(
            f"UPDATE pending_actions SET {', '.join(n + ' = ?' for n in names)} "  # noqa: S608
            "WHERE id = ? AND status = ?",
            (*(getattr(rec, n) for n in names), pending_id, from_status))
        return bool(cur.rowcount == 1)
