"""Least privilege in the shared database: what a data-plane replica's role
may do (docs/operations.md, "PostgreSQL roles").

The control plane's role owns the schema (it creates the tables on its first
start). A data-plane replica faces the partners, so its role can only read
what a request is checked against (revocations, disabled principals, the
CRLs, the signing keys, the CA certificates but **not their keys**, the
published relation snapshot) and write its own traces (audit lines and
keys, its heartbeat, last-seen times, consultations). It reads the vault
(the upstream credentials it presents) but never writes it. It cannot revoke,
issue, approve, sign a CRL, rewrite a shipped audit line or publish a
snapshot: a compromised replica cannot hide what it did or widen access.
"""

from __future__ import annotations

import re

# Table privileges of the data-plane role; `cas` by column, without key_pem.
DATA_PLANE_PRIVILEGES: tuple[tuple[str, str], ...] = (
    ("SELECT", "meta, counters, certificates, principal_states, crls, signing_keys, "
               "relation_snapshots, relation_pointer, fleet_checkpoints, audit_keys, replicas"),
    ("SELECT (id, cert_pem, created, status, retire_at)", "cas"),
    ("SELECT, INSERT, UPDATE", "last_seen"),
    ("SELECT (incident), INSERT", "consultations"),
    # D8: a lookup names an approval a manager gave on the admin plane.
    ("SELECT", "nrn_approvals"),
    # The tenant lockbox (D7): a reached tenant's approver consents, denies
    # or reviews on the data plane; the control plane opens the entries.
    ("SELECT, UPDATE", "lockbox"),
    ("INSERT, UPDATE, DELETE", "replicas"),
    ("SELECT, INSERT", "audit_lines"),
    ("INSERT, UPDATE", "audit_keys"),
    # The vault: upstream credentials are read on every request; only the
    # control plane puts, rotates or shreds.
    ("SELECT", "vault_meta, vault_master_keys, vault_secrets"),
    # The push outbox: the replicas take in batches and deliver the parts.
    ("SELECT, INSERT, UPDATE", "outbox_batches, outbox_parts"),
    # Breach notifications: queued on the response path, read by their owners.
    ("SELECT, INSERT", "outbox_notifications"),
)
_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def data_plane_grants(role: str) -> str:
    """The SQL that gives ``role`` (an existing role) the data plane's
    privileges on the tables there are; run by the schema's owner after the
    control plane's first start (and after an upgrade that adds a table).
    Idempotent."""
    if not _ROLE.fullmatch(role):
        raise ValueError(f"role {role!r}: lowercase letters, digits and _, at most 63")
    lines = [f"GRANT USAGE ON SCHEMA public TO {role};"]
    for privileges, tables in DATA_PLANE_PRIVILEGES:
        # Granted on the tables that exist (the outbox's, for one, only
        # where pushed data is configured); run it again after a new one.
        exist = " AND ".join(f"to_regclass('{t.strip()}') IS NOT NULL"
                             for t in tables.split(","))
        lines.append(f"DO $$ BEGIN IF {exist} THEN GRANT {privileges} ON {tables} TO {role}; "
                     "END IF; END $$;")
    return "\n".join(lines) + "\n"
