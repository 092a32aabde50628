"""Choosing the vault's backend from the state URL (``[state] url``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from gateway.vault._keys import MasterKeys
from gateway.vault._postgres import PostgresVault
from gateway.vault._sqlite import SqliteVault
from gateway.vault._store import Vault

POSTGRES = ("postgresql://", "postgres://")


def open_vault(state_url: str | None, path: Path, master: MasterKeys, *,
               clock: Callable[[], datetime] | None = None) -> Vault:
    """The vault next to the state: in the shared PostgreSQL database when
    the state is there (a fleet of replicas sees one vault), else the SQLite
    file ``path``. ``VaultLocked`` on a wrong master key, either way."""
    if state_url is not None and state_url.startswith(POSTGRES):
        return PostgresVault(state_url, master, clock=clock)
    return SqliteVault(path, master, clock=clock)
